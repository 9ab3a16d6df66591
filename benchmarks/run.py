"""Run every benchmark beside its baseline; print a table, write results.json.

Usage: ``python benchmarks/run.py [--quick] [--only NAME ...] [--out PATH]``.
Starts its own Redis server and two-engine cluster on free loopback ports
and stops them at the end.  ``--quick`` shrinks every count (a smoke run,
not figures to quote).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import api
import chaining
import logs
import panel
import peers
import push
import submit_overhead
import tree_read
from results import Result, table, write_json
from services import HERE, environment, raise_open_files

# tree reads first: later suites leave the process holding many objects
SUITES = {
    "tree_read": tree_read,
    "submit_overhead": submit_overhead,
    "push": push,
    "chaining": chaining,
    "logs": logs,
    "peers": peers,
    "api": api,
    "panel": panel,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), help="run only these")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    raise_open_files()
    results: list[Result] = []
    started = time.perf_counter()
    print("starting Redis and a 2-engine cluster on loopback...", flush=True)
    with environment():
        for name in args.only or SUITES:
            print(f"running {name}...", flush=True)
            t0 = time.perf_counter()
            results += SUITES[name].run(args.quick)
            print(f"  {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print(table(results))
    write_json(results, args.out, merge=bool(args.only))  # --only: keep the others
    print(f"\n{len(results)} figures in {time.perf_counter() - started:.0f} s; wrote {args.out}")
    return 0 if all(r.met is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
