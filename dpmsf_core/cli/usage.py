"""``dpmsf tenant usage [ID] [--since ISO-time-or-duration]``: each tenant's persisted usage, one JSON line each.

It reads what the servers flushed (every 10 s, and at shutdown) to the same place they write it: the SQLite
file in the state directory, or the shared document store when ``DPMSF_STORE`` is DynamoDB or Firestore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..config import Settings
from ..errors import ConfigError


def cmd_usage(args: argparse.Namespace) -> int:
    from ..metering.report import parse_since, report
    from ..metering.sinks import sink_for, usage_file

    settings = Settings.from_env()
    tenant = None
    if args.id:
        from ..tenancy.tenants import tenant_id

        try:
            tenant = tenant_id(args.id)
        except ValueError as exc:
            print(f"dpmsf: {exc}", file=sys.stderr)
            return 2
    try:
        since = parse_since(args.since, time.time())
    except ValueError as exc:
        print(f"dpmsf: --{exc}", file=sys.stderr)
        return 2
    path = usage_file(settings)
    if path is not None and not os.path.exists(path):  # nothing recorded here: say so, create nothing
        print(f"dpmsf: no usage recorded in {path} yet (DPMSF_STATE_DIR={settings.state_dir}).", file=sys.stderr)
        return 0
    try:
        sink = sink_for(settings)
        usage = sink.read(tenant, None if since is None else int(since) // 3600 * 3600)
    except Exception as exc:  # an unreadable file, an unreachable store: one line, never a traceback
        raise ConfigError(f"usage could not be read: {exc}") from None
    for row in report(usage, since)["results"]:
        print(json.dumps(row))
    return 0
