"""The conformance suite's data: one table of requests (``cases.py``), run against every target by
``tests/test_conformance.py``; ``package.json``/``package-lock.json`` and ``serverless*.yml`` set up the emulator."""
