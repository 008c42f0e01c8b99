"""pvmlab benchmarks: run as modules from the repository root, as root.

    sudo .venv/bin/python -m bench.stack_throughput --help
    sudo .venv/bin/python -m bench.footprint --help

Benchmarks print what they measured (a table, or JSON with ``--json``); nothing here asserts a
timing. See bench/README.md.
"""
