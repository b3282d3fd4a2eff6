"""A bare Sanic hello-world: the reference point for the HTTP baseline benchmark.

    python benchmarks/hello_app.py --port 8001 --workers 2

One GET route, `/healthz`, answering `{"status":"ok"}` (the same path and body as
Zhangban's liveness probe, so the benchmark runs the same wrk command against both).
No extensions, no middleware, access log and MOTD off. It only listens on 127.0.0.1
unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

app = Sanic("zb_bench_hello")
app.config.MOTD = False
app.config.ACCESS_LOG = False


@app.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare Sanic hello-world for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    app.run(
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        motd=False,
        single_process=False,
    )


if __name__ == "__main__":
    main()
