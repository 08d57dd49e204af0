"""Profile pacsnode's C-ECHO path: the node in-process under cProfile, driven by a client subprocess."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The client runs in its own process so that only the node is profiled.
CLIENT = """
import sys
from bench.echo.run import assoc_raw, echo_raw
port, mode, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rate = (assoc_raw if mode == "assoc" else echo_raw)(port, "PACSNODE", count, True)
print(f"{rate:.0f}")
"""


async def _serve_and_drive(
    mode: str, count: int, data: Path, log: bool, profile: cProfile.Profile | None
) -> float:
    from pacsnode.config.settings import load_settings
    from pacsnode.net.node import Node

    if log:
        from pacsnode.cli.main import _setup_logging

        _setup_logging(1, server=True)  # what `pacsnode serve` does by default: INFO, plain
    settings = load_settings(None, {"node": {"dicom_port": 0, "data": data, "aet": "PACSNODE"}}, environ={})
    node = Node(settings)
    await node.start()
    port = node.server.port
    try:

        async def client(n: int) -> float:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CLIENT,
                str(port),
                mode,
                str(n),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"client failed with {proc.returncode}")
            return float(out)

        await client(max(10, count // 10))  # warm-up, not profiled
        if profile is None:
            return await client(count)
        profile.enable()
        try:
            return await client(count)
        finally:
            profile.disable()
    finally:
        await node.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("assoc", "echo"), help="associations (1 echo each) or echoes on one")
    p.add_argument("-c", "--count", type=int, default=2000, help="associations or echoes (2000)")
    p.add_argument("--log", action="store_true", help="log at INFO, as `pacsnode serve` does")
    p.add_argument("--no-profile", action="store_true", help="only measure the rate, without cProfile")
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime)")
    p.add_argument("--limit", type=int, default=30, help="rows to print (30)")
    p.add_argument("-o", "--output", type=Path, help="also dump the raw profile here (for snakeviz etc.)")
    args = p.parse_args(argv)
    from pacsnode.net.loop import run_loop

    profile = None if args.no_profile else cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="pacsnode-profile-") as tmp:
        t0 = time.perf_counter()
        rate = run_loop(_serve_and_drive(args.mode, args.count, Path(tmp), args.log, profile))
        elapsed = time.perf_counter() - t0
    unit = "associations/s" if args.mode == "assoc" else "echoes/s"
    where = "without profiler" if profile is None else "under cProfile"
    print(f"{args.count} {args.mode}: {rate:.0f} {unit} seen by the client, {where} ({elapsed:.1f} s)")
    if profile is None:
        return 0
    stats = pstats.Stats(profile)
    if args.output:
        stats.dump_stats(args.output)
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
