"""How far more ingest processes would go (PS3.4 Annex B C-STORE): one node with four storescu
associations against two nodes with two each, on the same data, in one run.

An upper bound for a multi-process design: the two nodes share nothing (two data folders,
two SQLite indexes), so the figure leaves out whatever sharing one index would cost.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import client_env
from bench.ingest.data import DEFAULT_CACHE, generate, small_spec
from bench.ingest.run import IngestServer, split, storescu


def _two_nodes(root: Path, parts: list[list[Path]], env: dict[str, str]) -> tuple[float, list[str]]:
    """Two fresh nodes, half of the parts each, sent at once: wall time of the slower half, errors."""
    nodes = [IngestServer("pacsnode-sqlite", root / name, env, None) for name in ("a", "b")]
    servers = [node.start() for node in nodes]
    halves = [parts[: len(parts) // 2], parts[len(parts) // 2 :]]
    results: list[tuple[float, list[str]]] = [(0.0, []), (0.0, [])]

    def send(i: int) -> None:
        results[i] = storescu(servers[i], halves[i], True, None)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for node in nodes:
            node.stop()
    # Both halves start together: the run lasts as long as the slower one.
    return max(r[0] for r in results), [e for r in results for e in r[1]]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-r", "--rounds", type=int, default=2, help="rounds, one node then two in each (2)")
    p.add_argument("--count", type=int, default=5000, help="small 64x64 instances (5000)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data set cache folder")
    args = p.parse_args(argv)
    dataset = generate(small_spec(args.count), args.cache, lambda m: print(m, file=sys.stderr))
    parts = split(dataset, 4)
    env = client_env(True)
    # Everything is deleted at the end only: deletions slow the next file creations (README).
    root = Path(tempfile.mkdtemp(prefix="processes-", dir=args.cache))
    try:
        for round_ in range(args.rounds):
            one = IngestServer("pacsnode-sqlite", root / f"one-{round_}", env, None)
            try:
                seconds, errors = storescu(one.start(), parts, True, None)
            finally:
                one.stop()
            two_seconds, two_errors = _two_nodes(root / f"two-{round_}", parts, env)
            if errors or two_errors:
                print(f"error: storescu failed: {(errors + two_errors)[:3]}", file=sys.stderr)
                return 1
            one_rate, two_rate = dataset.count / seconds, dataset.count / two_seconds
            print(
                f"round {round_ + 1}: one node, 4 associations: {one_rate:,.0f}/s; "
                f"two nodes, 2 each: {two_rate:,.0f}/s ({two_rate / one_rate:.2f}x)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
