"""Command endpoints over the scripts in this folder (fixture for tests/test_commands.py and HTTP tests)."""

from dpmsf_core.expose import expose

echo = expose.command(API="cmd-echo", argv=["./echo_input.sh"])
text = expose.command(API="cmd-text", argv=["sh", "text_out.sh"])
fail = expose.command(API="cmd-fail", argv=["sh", "fail.sh"], method="GET|POST")
missing = expose.command(API="cmd-missing", argv=["dpmsf-no-such-program-xyz", "--version"])
flood = expose.command(API="cmd-flood", argv=["sh", "flood.sh"], timeout=10)
