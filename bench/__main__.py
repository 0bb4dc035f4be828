"""``python -m bench``: run the benchmarks, print the table, write the report.

Exits non-zero only when something broke (a measure errored, or a
correctness check failed), never because a ratio is below its floor:
performance is reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# gRPC core reads this once, when it loads: set it before anything imports
# grpc. At its default it prints an INFO line for every connection the
# benchmark's servers close at the end, burying the table.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from bench.harness import FULL, SMOKE
from bench.pgseed import DEFAULT_URL
from bench.report import RESULTS_DIR, markdown, write
from bench.run import run


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="jobstream benchmarks against bare gRPC and SQLite baselines (issue 4).",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="one short round of everything (part of make test); checks correctness only",
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="where the .md and .json reports go"
    )
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated targets to run, e.g. T1,T5 (T5 also gives T7); default all",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep server data and logs in a new directory under this one "
        "instead of a temporary directory",
    )
    p.add_argument(
        "--postgres",
        default=os.environ.get("JOBSTREAM_BENCH_POSTGRES", DEFAULT_URL),
        metavar="URL",
        help="PostgreSQL database for the T19.pg/T20.pg rows, in a fresh schema dropped "
        f"afterwards; '' leaves them out (default: $JOBSTREAM_BENCH_POSTGRES, else {DEFAULT_URL})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each measure's rounds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks; 0 unless something errored or a check failed."""
    args = parser().parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    settings = dataclasses.replace(settings, postgres_url=args.postgres)
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=max(1, args.rounds))
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The worker logs every job it runs; thousands of them are not news.
    logging.getLogger("jobstream").setLevel(logging.WARNING)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.workdir is not None:
        # A fresh directory per run: seeding needs empty databases, and the
        # previous run's logs stay for comparison.
        workdir = args.workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        result = asyncio.run(run(settings, workdir, argv_list, only))
    else:
        with tempfile.TemporaryDirectory(prefix="jobstream-bench-") as tmp:
            result = asyncio.run(run(settings, Path(tmp), argv_list, only))
    md_path, json_path = write(result, args.out)
    print(markdown(result))
    print(f"report: {md_path}\nraw numbers: {json_path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
