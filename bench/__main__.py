"""``python -m bench BENCH ...``: run one benchmark (``python -m bench --help`` lists them)."""

import sys

from bench.run import main

#: One line per benchmark module; each exposes ``add_parser(subparsers)``.
BENCHMARKS = [
    "bench.edge",
    "bench.ingest",
    "bench.e2e",
]

sys.exit(main(BENCHMARKS))
