"""``python -m bench.percall``: what one call costs the server, in CPU.

T1 and T2 compare SubmitJob's calls per second with a bare echo's; this
says why they differ. It starts a jobstream server and the bare echo server
(bench/bare_server.py), drives each call for a while at 1 and at 32 in
flight, and divides the CPU time each server process used (all its threads,
read from /proc) by the calls it answered: the bare echo, SubmitJob (with
T1's ~100-byte request) and GetJob.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.baselines import WARMUP_CALLS, echo
from bench.harness import MANY_IN_FLIGHT, drive
from bench.procs import Proc, bare_server, cpu_seconds, jobstream_server
from bench.service import Call, submit_request
from jobstream.v1 import job_service_pb2 as js
from jobstream.v1 import job_service_pb2_grpc

DURATION_S = 3.0
"""How long each call is driven at each number in flight."""

MS = 1_000.0
"""Seconds to milliseconds."""


async def measure(proc: Proc, make: Call, in_flight: int, duration_s: float) -> tuple[float, float]:
    """Calls per second, and server CPU milliseconds per call."""
    for _ in range(WARMUP_CALLS):
        await make()
    cpu = cpu_seconds(proc.pid)
    result = await drive(make, in_flight=in_flight, duration_s=duration_s)
    return result.rate, (cpu_seconds(proc.pid) - cpu) * MS / max(1, result.count)


async def run(workdir: Path, duration_s: float) -> None:
    """Prints one line per call and number in flight."""
    bare = bare_server(workdir).start()
    main = jobstream_server(workdir, "percall").start()
    try:
        async with (
            grpc.aio.insecure_channel(bare.target) as bare_channel,
            grpc.aio.insecure_channel(main.target) as channel,
        ):
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            request = submit_request()
            job = (await stub.SubmitJob(request)).job
            get = js.GetJobRequest(job_id=job.id)
            calls: list[tuple[str, Proc, Call]] = [
                ("bare unary echo", bare, echo(bare_channel)),
                ("SubmitJob", main, lambda: stub.SubmitJob(request)),
                ("GetJob", main, lambda: stub.GetJob(get)),
            ]
            for name, proc, make in calls:
                for in_flight in (1, MANY_IN_FLIGHT):
                    rate, cpu_ms = await measure(proc, make, in_flight, duration_s)
                    print(
                        f"{name:16s} {in_flight:2d} in flight: {rate:7.0f} calls/s, "
                        f"server CPU {cpu_ms:.3f} ms per call",
                        flush=True,
                    )
    finally:
        main.stop()
        bare.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.percall``."""
    parser = argparse.ArgumentParser(prog="python -m bench.percall", description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help="seconds per call and load"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with tempfile.TemporaryDirectory(prefix="jobstream-percall-") as workdir:
        asyncio.run(run(Path(workdir), args.duration))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
