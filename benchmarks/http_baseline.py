"""HTTP baseline: `GET /healthz`, the cheapest route, on Zhangban and on a bare Sanic app.

    .venv/bin/python benchmarks/http_baseline.py [--quick] [--duration 10] [--workers 1,2]

What it measures: requests/s, p50 and p99 of `GET /healthz`, i.e. what the framework plus our own
request plumbing (request-id middleware, error handling, JSON logging set-up, Sanic-Ext) costs,
not any business logic. Targets, each started fresh on a free 127.0.0.1 port and stopped before
the next one: Zhangban embedded (1 worker), Zhangban in production (PostgreSQL + Redis, every
channel configured against the simulators) with each of `--workers`, and `benchmarks/hello_app.py`
(one route, same path and body, no extensions, access log off) with the same worker counts. The
ratio column divides each Zhangban row by the bare Sanic row with as many workers, measured in the
same run. Quick mode: production and bare Sanic, 1 worker.
"""

from __future__ import annotations

import sys

import harness as h

SECTION = "## HTTP baseline (GET /healthz)"


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, workers="1,2", quick={"workers": "1"})
    with h.Session(args, SECTION, "benchmarks/http_baseline.py") as s:
        rows: list[h.Row] = []
        zhangban: list[tuple[h.Row, int]] = []
        for backend in s.backends():
            for workers in args.worker_counts if backend == h.PRODUCTION else [1]:
                server = s.zhangban(backend, workers, name=f"zhangban, {backend}, {workers} worker(s)")
                try:
                    server.start()
                    row = s.ceiling(server)
                    row.target, row.extra["start s"] = "GET /healthz (Zhangban)", server.start_s
                except Exception as exc:  # the row says what went wrong
                    row = s.failed_row("GET /healthz (Zhangban)", server.label, exc)
                s.stop(server)
                rows.append(row)
                zhangban.append((row, workers))
        hello_rps = {}
        for workers in args.worker_counts:
            hello = h.Plain(s, f"hello (bare Sanic), {workers} worker(s)",
                            [h.python_bin(), str(h.BENCH_DIR / "hello_app.py"), "--port", "{port}", "--workers", str(workers)],
                            ready_path="/healthz")  # fmt: skip
            try:
                took = hello.start()
                row = s.ceiling(hello)
                row.target, row.extra["start s"], row.ratio = "GET /healthz (bare Sanic)", took, 1.0
            except Exception as exc:  # the row says what went wrong
                row = s.failed_row("GET /healthz (bare Sanic)", hello.label, exc)
            hello.stop()
            hello_rps[workers] = row.rps
            rows.append(row)
        for row, workers in zhangban:
            row.ratio = row.rps / hello_rps[workers] if row.rps and hello_rps.get(workers) else None
        s.wrk_table("", rows, {"start s": 1}, ratio_label="ratio to bare Sanic (same workers)")
        return s.finish(
            [
                f"Command, per target: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
                f"http://127.0.0.1:PORT/healthz` after a {args.warmup} s warm-up with the same command.",
                "Zhangban runs `server.py serve` with `LOG_LEVEL=WARNING` in an empty temporary directory; "
                "*embedded*: the default (SQLite, fakeredis, memory broker); *production*: a fresh PostgreSQL "
                "database, Redis with a throw-away key prefix, `TASK_BROKER=redis`, every channel configured "
                "against the simulators. *bare Sanic*: `benchmarks/hello_app.py`, same route and body.",
                "start s: from the start to the first 200 on /healthz.",
                "wrk shares the cores with the server: ceilings of this machine, not of production hardware.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
