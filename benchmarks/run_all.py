"""Runs every benchmark and prints one table of ratios: what `make bench` runs.

    .venv/bin/python benchmarks/run_all.py                 # quick mode: every benchmark, a few minutes
    .venv/bin/python benchmarks/run_all.py --full          # the full runs; each writes its RESULTS.md section
    .venv/bin/python benchmarks/run_all.py --only bot,callbacks [-- extra options for each benchmark]

Each benchmark runs as its own process (`benchmarks/NAME.py --quick`, or without `--quick` with
`--full`), one after the other, and appends one JSON line per row to a summary file; the table
printed at the end has, per row, requests/s, p99 and the ratio to the `/healthz` of the same
server in the same run (or, for rows that are not HTTP, the figure named in the last column:
a speed-up, a rate). Quick runs are short and noisy: read the ratios, not the absolute numbers,
and re-measure with `--full` on a quiet machine before quoting any of them. Quick runs leave
RESULTS.md alone (pass `-- --write` to write a dated smoke-run section anyway).
Exit code: 0 when every benchmark ended with 0, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h

BENCHMARKS = [
    "http_baseline",
    "identity",
    "catalogue",
    "city_catalogue",
    "bot",
    "callbacks",
    "push",
    "payments",
    "evaluation",
    "notices",
    "materials",
]
# Benchmarks other branches add join the run once they are written on the harness.
for _extra in ("dashboard",):
    _path = h.BENCH_DIR / f"{_extra}.py"
    if _path.exists() and "import harness" in _path.read_text(encoding="utf-8"):
        BENCHMARKS.append(_extra)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full runs (each writes its RESULTS.md section)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(BENCHMARKS) if args.only else set()
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    summary = Path(tempfile.mkstemp(prefix="zbbench-summary-", suffix=".jsonl")[1])
    env = {**os.environ, h.SUMMARY_ENV: str(summary)}
    results, began = [], time.monotonic()
    try:
        for name in chosen:
            cmd = [h.python_bin(), str(h.BENCH_DIR / f"{name}.py"), *([] if args.full else ["--quick"]), *passthrough]
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.monotonic()
            code = subprocess.call(cmd, env=env)
            results.append((name, code, time.monotonic() - t0))
        rows = [json.loads(line) for line in summary.read_text(encoding="utf-8").splitlines() if line.strip()]
    finally:
        summary.unlink(missing_ok=True)
    table = []
    for r in rows:
        table.append(
            {
                "benchmark": r["benchmark"],
                "target": r["target"],
                "server": r["server"],
                "requests/s": r["rps"] if not r.get("failed") else f"failed: {r['failed'][:60]}",
                "p99 ms": r["p99_ms"],
                "ratio": r["ratio"],
                "ratio of": r.get("what") or ("/healthz, same server" if r["rps"] is not None else ""),
                "others' CPU": f"{r['others_cpu']:.0%}" if r.get("others_cpu") is not None else "—",
            }
        )
    mode = "full" if args.full else "quick"
    print(f"\n## Benchmarks, {mode} mode, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("\n".join(h.markdown_table(table, {"ratio": 3, "p99 ms": 1})))
    print()
    for name, code, took in results:
        print(f"- {name}: exit {code}, {took:.0f} s")
    print(f"- total {time.monotonic() - began:.0f} s; machine: {h.machine_line()}")
    print("- others' CPU: the share of the machine other processes used during the row; above 10% its numbers are low.")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
