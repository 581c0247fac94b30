"""The web app's rows of the reliability figures (issue 14): a smaller run of
:mod:`app_load` (60 requests from 4 clients at once on the bundled EfficientNet-Lite0, then a
100-request fuzz), about a minute on 2 CPU cores."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import app_load  # noqa: E402


def figures(requests: int = 60, concurrency: int = 4, fuzz: int = 100) -> list[tuple[str, str]]:
    """``[(what, result)]``: the load held and the fuzz answered, in words for the docs."""
    r = app_load.run(requests, concurrency, fuzz)
    after = "serving afterwards" if r["serving_after_load"] else "NOT serving afterwards"
    fuzz_after = "serving afterwards" if r["serving_after_fuzz"] else "NOT serving afterwards"
    rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f} MB"
    p95 = "-" if r["p95_ms"] is None else f"{r['p95_ms']:.0f} ms"
    p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.0f} ms"
    statuses = ", ".join(f"{n} x {s or 'failed'}" for s, n in r["fuzz_statuses"].items())
    return [
        ("app load", f"{requests} requests, {concurrency} concurrent ({r['model']}): {r['errors']} errors, "
                     f"p50 {p50}, p95 {p95}, peak RSS {rss}, {after}"),
        ("app request fuzz", f"{fuzz} requests, {r['fuzz_5xx']} 5xx ({statuses}), {fuzz_after}"),
    ]


if __name__ == "__main__":
    for what, result in figures():
        print(f"{what}: {result}")
