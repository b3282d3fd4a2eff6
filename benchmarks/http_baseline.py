"""HTTP baseline: requests/s and p50/p99 latency of `GET /healthz`, measured with wrk.

    python benchmarks/http_baseline.py [--duration 10] [--connections 32] [--threads 1]

Targets, all in one run and each started fresh on a free 127.0.0.1 port:

- Zhangban, 1 worker, embedded default (no REDIS_URL: fakeredis, in-memory broker);
- Zhangban, 1 worker, with Redis (REDIS_URL=redis://127.0.0.1:6379/0);
- Zhangban, 2 workers, with Redis (more than one worker needs Redis);
- a bare Sanic hello-world (benchmarks/hello_app.py), 1 and 2 workers.

Every target gets the same wrk command after a warm-up run. The Redis targets are skipped,
with a note, when nothing answers PING on 127.0.0.1:6379. The results are printed and written
to the `## HTTP baseline (GET /healthz)` section of benchmarks/RESULTS.md; other sections of
that file are kept. Exit codes: 0 done, 1 a target failed, 2 wrk missing or bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "## HTTP baseline (GET /healthz)"
PATH = "/healthz"
HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/0"
START_TIMEOUT = 60.0
BUSY = 0.10  # share of the CPU used by other processes while measuring above which a row is flagged
STOP_TIMEOUT = 25.0  # above the server's GRACEFUL_SHUTDOWN_TIMEOUT (15 s)

# Settings the caller's shell might carry; removed so each target gets exactly our config.
ZB_VARIABLES = {
    "HOST",
    "PORT",
    "WORKERS",
    "DATABASE_URL",
    "REDIS_URL",
    "TASK_BROKER",
    "MEDIA_ROOT",
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "PUBLIC_BASE_URL",
    "LOG_LEVEL",
    "REQUEST_MAX_SIZE",
    "REQUEST_TIMEOUT",
    "RESPONSE_TIMEOUT",
    "GRACEFUL_SHUTDOWN_TIMEOUT",
    "REDIS_KEY_PREFIX",
}


def python_bin() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# -- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    label: str  # shown in the table
    kind: str  # "zhangban" or "hello"
    workers: int
    redis: bool = False


@dataclass
class Result:
    target: Target
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    start_s: float | None = None
    stop_s: float | None = None
    requests: int | None = None
    non_2xx: int = 0
    socket_errors: str | None = None
    skipped: str | None = None
    attempts: int = 1  # measurements made of this target (more when the machine was not quiet)
    others_cpu: float = 0.0  # share of the machine's CPU used by other processes while measuring
    failed: str | None = None
    log_problems: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def redis_answers() -> bool:
    try:
        with socket.create_connection((HOST, REDIS_PORT), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def delete_redis_keys(prefix: str) -> str:
    """Deletes the keys the Redis targets left under `prefix`; says what it did."""
    try:
        import redis  # in the project's venv
    except ImportError:
        return f"redis package missing: keys under '{prefix}' left in Redis"
    try:
        client = redis.Redis(host=HOST, port=REDIS_PORT, db=0, socket_timeout=5)
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
        return f"deleted {len(keys)} Redis key(s) under '{prefix}'"
    except Exception as exc:  # cleanup must not hide the results
        return f"could not delete Redis keys under '{prefix}': {type(exc).__name__}: {exc}"


class Server:
    """One target's server process (in its own session and temp dir), stopped by `stop()`."""

    def __init__(self, target: Target, workdir: Path, redis_prefix: str):
        self.target = target
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.redis_prefix = redis_prefix
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if k not in ZB_VARIABLES and k != "PYTHONPATH"}
        env["PYTHONUNBUFFERED"] = "1"
        if self.target.kind == "hello":
            cmd = [
                python_bin(),
                str(BENCH_DIR / "hello_app.py"),
                "--port",
                str(self.port),
                "--workers",
                str(self.target.workers),
            ]
            return cmd, env
        env.update({"HOST": HOST, "WORKERS": str(self.target.workers), "LOG_LEVEL": "WARNING"})
        if self.target.redis:
            alphabet = string.ascii_letters + string.digits
            env.update(
                {
                    "REDIS_URL": REDIS_URL,
                    "REDIS_KEY_PREFIX": self.redis_prefix,
                    "SECRET_KEY": "".join(secrets.choice(alphabet) for _ in range(48)),
                    "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                }
            )
        cmd = [python_bin(), str(ROOT / "server.py"), "serve", "--port", str(self.port)]
        return cmd, env

    def start(self) -> float:
        """Starts the server and waits until GET /healthz answers 200; returns the seconds taken."""
        cmd, env = self._command_and_env()
        self._log = open(self.log_path, "wb")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = began + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode} before answering (its output follows)")
            try:
                with urllib.request.urlopen(self.url, timeout=1.0) as response:
                    if response.status == 200:
                        took = time.monotonic() - began
                        if self.target.workers > 1:
                            time.sleep(1.0)  # let the other workers finish booting; warm-up follows
                        return took
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no 200 from {self.url} within {START_TIMEOUT:.0f} s (its output follows)")

    def stop(self) -> float | None:
        """SIGINT to the main process, then SIGKILL to its process group if it lingers."""
        if self.proc is None:
            return None
        began = time.monotonic()
        pgid = self.proc.pid  # start_new_session: the group is ours alone
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(
                        f"  {self.target.label}: still running after {STOP_TIMEOUT:.0f} s, killing it", file=sys.stderr
                    )
            try:  # workers left behind, or the main process itself
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
        finally:
            if self._log:
                self._log.close()
        return time.monotonic() - began

    def log_problems(self) -> list[str]:
        """Lines of the server's output that look like trouble, one summary line each."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        pattern = re.compile(r"Traceback|Error|Exception|WARNING|CRITICAL")
        problems = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "level" in record:  # Zhangban's JSON-lines logs
                if record["level"] in {"WARNING", "ERROR", "CRITICAL"}:
                    summary = f"{record['level']} {record.get('logger', '?')}: {record.get('msg', '')}"
                    exc = str(record.get("exc") or "").strip().splitlines()
                    problems.append(summary + (f" [{exc[-1]}]" if exc else ""))
            elif pattern.search(line):
                problems.append(line.strip())
        return problems

    def keep_log(self, directory: Path | None) -> None:
        if directory and self.log_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, directory / f"{self.workdir.name}.log")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def group_jiffies(pgid: int) -> int:
    """CPU ticks (user + system) used so far by the live processes of process group `pgid`."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total


def wait_until_quiet(limit: float, quiet_for: int = 5) -> float:
    """Waits up to `limit` seconds until the machine has been idle `quiet_for` seconds in a row
    (none of our servers runs now); returns the busy share seen last."""
    deadline = time.monotonic() + limit
    told = False
    quiet = 0
    while True:
        busy0, total0 = machine_jiffies()
        time.sleep(1.0)
        busy1, total1 = machine_jiffies()
        busy = (busy1 - busy0) / max(1, total1 - total0)
        quiet = quiet + 1 if busy <= BUSY else 0
        if quiet >= quiet_for or time.monotonic() >= deadline:
            return busy
        if not told and busy > BUSY:
            print(
                f"  the machine is {busy:.0%} busy with other processes: waiting up to {limit:.0f} s for quiet",
                flush=True,
            )
            told = True


# -- wrk ---------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    if not match:
        raise ValueError(f"unknown wrk duration '{value}'")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def wrk_command(args: argparse.Namespace, url: str, seconds: int, latency: bool = True) -> list[str]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s"]
    if latency:
        cmd.append("--latency")
    return cmd + [url]


def run_wrk(cmd: list[str], seconds: int) -> tuple[str, float]:
    """wrk's output and the CPU seconds it used."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + seconds + 60
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wrk did not finish within {seconds + 60} s")
                time.sleep(0.05)
        except BaseException:  # timeout, Ctrl-C, SIGTERM: wrk goes too
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {stderr.strip() or stdout.strip()}")
    return stdout, usage.ru_utime + usage.ru_stime


def parse_wrk(output: str, result: Result) -> None:
    distribution = output.split("Latency Distribution", 1)
    if len(distribution) != 2:
        raise RuntimeError("wrk output has no 'Latency Distribution' (was --latency passed?)")
    percentiles = dict(re.findall(r"^\s*(\d+)%\s+(\S+)\s*$", distribution[1], re.MULTILINE))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not rps or "50" not in percentiles or "99" not in percentiles:
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    result.rps = float(rps.group(1))
    result.p50_ms = to_ms(percentiles["50"])
    result.p99_ms = to_ms(percentiles["99"])
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    result.requests = int(total.group(1)) if total else None
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors:\s*(.+)", output)
    result.socket_errors = errors.group(1).strip() if errors else None


# -- machine and report ------------------------------------------------------------------------


def machine_line() -> str:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = subprocess.run(
        [python_bin(), "-c", "import platform, sanic; print(platform.python_version(), sanic.__version__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    py_version, sanic_version = (probe.stdout.split() + ["?", "?"])[:2]
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    wrk_version = wrk_version.split("[")[0].replace("Copyright", "").strip()
    return (
        f"{cores} cores (nproc), {model}; Python {py_version}, Sanic {sanic_version}; {wrk_version}; "
        f"Linux {os.uname().release}"
    )


def fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(results: list[Result]) -> list[str]:
    lines = ["| target | workers | requests/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r.skipped or r.failed:
            why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
            lines.append(f"| {r.target.label} | {r.target.workers} | {why} | — | — |")
        else:
            lines.append(
                f"| {r.target.label} | {r.target.workers} | {fmt(r.rps, 0)} | {fmt(r.p50_ms, 2)} | {fmt(r.p99_ms, 2)} |"
            )
    return lines


def section(results: list[Result], args: argparse.Namespace, machine: str, when: str) -> str:
    command = " ".join(shlex.quote(p) for p in wrk_command(args, f"http://{HOST}:PORT{PATH}", args.duration))
    warmup = " ".join(wrk_command(args, f"http://{HOST}:PORT{PATH}", args.warmup, latency=False))
    starts = ", ".join(
        f"{r.target.label} ×{r.target.workers}: {r.start_s:.1f} s" for r in results if r.start_s is not None
    )
    notes = []
    for r in results:
        if r.attempts > 1:
            notes.append(
                f"- {r.target.label} ×{r.target.workers}: measured {r.attempts} times because other processes "
                "disturbed it; the least disturbed attempt is shown"
            )
        if r.others_cpu > BUSY:
            notes.append(
                f"- {r.target.label} ×{r.target.workers}: other processes used {r.others_cpu:.0%} of the CPU "
                "while it was measured: its numbers are low"
            )
        if r.non_2xx or (r.socket_errors and r.socket_errors != "connect 0, read 0, write 0, timeout 0"):
            notes.append(
                f"- {r.target.label} ×{r.target.workers}: {r.non_2xx} non-2xx responses; socket errors: {r.socket_errors}"
            )
        if r.log_problems:
            notes.append(
                f"- {r.target.label} ×{r.target.workers}: {len(r.log_problems)} warning/error line(s) in its log, "
                f"first: `{r.log_problems[0][:240]}`"
            )
    body = [
        SECTION,
        "",
        f"Measured {when} by `make bench` (`benchmarks/http_baseline.py`).",
        "",
        *table(results),
        "",
        f"- Command, per target: `{command}` after a warm-up `{warmup}`; "
        "each target started fresh on a free port, the others stopped.",
        "- Zhangban runs `server.py serve` with `LOG_LEVEL=WARNING` (every run, so access logs do not dominate), "
        "in an empty temporary directory (fresh SQLite under `var/`). *embedded*: the default, no `REDIS_URL`; "
        f"*Redis*: `REDIS_URL={REDIS_URL}`, a throw-away `REDIS_KEY_PREFIX`, random `SECRET_KEY` and "
        "`FIELD_ENCRYPTION_KEY` (2 workers require this production mode). "
        "*hello*: `benchmarks/hello_app.py`, a bare Sanic app with the same route and body, access log off.",
        f"- Machine: {machine}.",
        "- wrk shares the 2 cores with the server, so these are the ceilings of this machine, "
        "not of production hardware.",
    ]
    measured = [r.others_cpu for r in results if r.rps is not None]
    if measured:
        body.append(
            f"- Other processes used at most {max(measured):.0%} of the CPU during the measured runs "
            f"(rows above {BUSY:.0%} are flagged below)."
        )
    if starts:
        body.append(f"- Time from start to the first 200 on /healthz (includes migrations): {starts}.")
    if notes:
        body += ["- Notes and problems seen:", *[f"  {n}" for n in notes]]
    return "\n".join(body) + "\n"


def write_results(text: str, title: str = SECTION) -> None:
    """Replaces the `title` section of RESULTS.md with `text` (appends it if missing); keeps the others."""
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        new = existing.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + after if after else "")
    RESULTS.write_text(new)


# -- main --------------------------------------------------------------------------------------


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="HTTP baseline of GET /healthz with wrk (see benchmarks/README.md).")
    parser.add_argument("--duration", type=positive, default=10, help="seconds of each measured run (default 10)")
    parser.add_argument("--warmup", type=positive, default=2, help="seconds of the warm-up run (default 2)")
    parser.add_argument("--connections", type=positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=positive, default=1, help="wrk threads (default 1)")
    parser.add_argument("--no-redis", action="store_true", help="skip the targets that need Redis")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="S",
        help="before each target, wait up to S seconds for other processes to go idle (default 120)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a target again, up to N times, when other processes disturbed it (default 2)",
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy each server's output into DIR")
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    return args


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def measure(target: Target, workdir: Path, prefix: str, args: argparse.Namespace, servers: list[Server]) -> Result:
    """Starts `target`, warms it up, measures it with wrk, stops it."""
    result = Result(target)
    server = Server(target, workdir, prefix)
    if args.quiet_wait > 0:
        wait_until_quiet(args.quiet_wait)
    servers.append(server)
    print(f"- {target.label} ×{target.workers} on port {server.port}: starting", flush=True)
    try:
        result.start_s = server.start()
        print(
            f"  answering after {result.start_s:.1f} s; warm-up {args.warmup} s, measuring {args.duration} s",
            flush=True,
        )
        run_wrk(wrk_command(args, server.url, args.warmup, latency=False), args.warmup)
        busy0, total0 = machine_jiffies()
        ours0 = group_jiffies(server.proc.pid)
        output, wrk_cpu = run_wrk(wrk_command(args, server.url, args.duration), args.duration)
        busy1, total1 = machine_jiffies()
        ours = group_jiffies(server.proc.pid) - ours0 + wrk_cpu * os.sysconf("SC_CLK_TCK")
        result.others_cpu = max(0.0, (busy1 - busy0 - ours) / max(1, total1 - total0))
        parse_wrk(output, result)
        print(
            f"  {fmt(result.rps, 0)} req/s, p50 {fmt(result.p50_ms, 2)} ms, p99 {fmt(result.p99_ms, 2)} ms"
            f" ({result.requests} requests, {result.non_2xx} non-2xx;"
            f" other processes used {result.others_cpu:.0%} of the CPU)",
            flush=True,
        )
        if result.others_cpu > BUSY:
            print("  warning: the machine was not quiet, these numbers are low", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        result.failed = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        tail = server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []
        for line in tail:
            print(f"  | {line}", file=sys.stderr)
    finally:
        result.stop_s = server.stop()
        servers.remove(server)
        result.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        if result.stop_s is not None and result.stop_s > 5:
            print(f"  note: took {result.stop_s:.1f} s to stop", flush=True)
        for line in result.log_problems[:5]:
            print(f"  log: {line[:300]}")
        if len(result.log_problems) > 5:
            print(f"  log: ... {len(result.log_problems) - 5} more problem line(s)")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark uses it as the load generator.\n"
            "Install it from Debian's packages:  apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop our servers on SIGTERM too

    targets = [
        Target("zhangban (embedded)", "zhangban", 1),
        Target("zhangban (Redis)", "zhangban", 1, redis=True),
        Target("zhangban (Redis)", "zhangban", 2, redis=True),
        Target("hello (bare Sanic)", "hello", 1),
        Target("hello (bare Sanic)", "hello", 2),
    ]
    redis_ok = not args.no_redis and redis_answers()
    redis_skip = "--no-redis" if args.no_redis else f"no Redis on {HOST}:{REDIS_PORT}"
    prefix = f"zbbench{secrets.token_hex(4)}:"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_line()
    print(f"HTTP baseline, {when}\n{machine}\n")

    results: list[Result] = []
    servers: list[Server] = []
    interrupted = False
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-")
    try:
        for n, target in enumerate(targets):
            if target.redis and not redis_ok:
                results.append(Result(target, skipped=redis_skip))
                print(f"- {target.label} ×{target.workers}: skipped ({redis_skip})")
                continue
            attempts: list[Result] = []
            for attempt in range(args.retries + 1):
                workdir = Path(tmp.name) / f"{n}-{target.kind}-{target.workers}-{attempt}"
                workdir.mkdir()
                attempts.append(measure(target, workdir, prefix, args, servers))
                last = attempts[-1]
                if last.failed or last.others_cpu <= BUSY:
                    break
                if attempt < args.retries:
                    print("  the machine was not quiet: measuring this target again", flush=True)
            # The attempt least disturbed by other processes (never the fastest by choice).
            chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
            chosen.attempts = len(attempts)
            results.append(chosen)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
        if redis_ok:
            print(delete_redis_keys(prefix))
        tmp.cleanup()

    if interrupted:
        return 130
    print()
    print("\n".join(table(results)))
    print(f"\nwrk shares the {machine.split()[0]} cores with the server: ceilings of this machine, not of production.")
    if not args.no_write:
        write_results(section(results, args, machine, when))
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
