"""Run every benchmark, one after the other, each printing its table.

    python benchmarks/run.py            # full size: about an hour on 2 CPU cores
    python benchmarks/run.py --smoke    # tiny models, same code paths: about 2 minutes (CI)
    python benchmarks/run.py --only peers,speed_limit

Each benchmark is its own script in this folder (see README.md), run here in its own process,
so one benchmark's imports and caches do not touch the next; the exit status is the first
failure's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("speed_limit", "peers", "scorecam_memory", "faithfulness", "metrics_speed", "folder",
              "app_load", "cli_memory", "dataset", "relevance_speed", "road_speed", "first_call",
              "startup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, same code paths (CI)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark {unknown}; they are {', '.join(BENCHMARKS)}")
    status = 0
    for name in names:
        print(f"=== {name}{' --smoke' if args.smoke else ''}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *(["--smoke"] if args.smoke else [])])
        print(f"=== {name}: exit status {rc}, {time.perf_counter() - start:.0f} s\n", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
