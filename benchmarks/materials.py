"""Materials benchmark: the image pipeline (`handlers.materials.pipeline.process`) against a naive Pillow
pipeline, and `POST /api/v1/materials` end to end through the real server.

    .venv/bin/python benchmarks/materials.py [--images 30] [--upload-duration 15] [--concurrency 6]

Part 1, in this process (and in child processes for the memory figures): 12-megapixel phone-style
JPEGs (4000×3000, generated here: gradients, shapes, a printed page of text and per-channel sensor
noise, quality 92, EXIF Orientation 6 plus make, model, time and GPS) go through

- *media.process*: the project's pipeline (`max_edge=2000`, `thumb_edge=320`: JPEG draft decode,
  EXIF transpose, baseline JPEG q85 without metadata, 320 px thumbnail q80, quality hints);
  the run fails unless both give equal output (`MAX_MEAN_DIFF`);
- *naive Pillow*: `Image.open` + `load()` (full decode), `ImageOps.exif_transpose`, a 320 px
  `thumbnail` (LANCZOS) of a copy of the full image, `thumbnail((2000, 2000), LANCZOS)`, saved as
  JPEG q85 and the thumbnail as JPEG q80.

For each: ms per image (median and p95, one thread, after warm-up), images/s with one thread, with
ThreadPoolExecutor(2) and with ProcessPoolExecutor(2), the output sizes (pixels and bytes) and the
peak-memory increase of a fresh child process handling one image (`ru_maxrss` after minus before).

Part 2, through the real server: an L1 citizen (signed in through the WeChat simulator, which runs
as its own process) uploads distinct ~300 KB 1600×1200 JPEGs as multipart `file` + `kind` with an
asyncio + httpx client (`--concurrency` uploads in flight), on the embedded default and then in
production mode (PostgreSQL + Redis), as identity.py sets them up. Each upload carries a unique JPEG
comment segment, so no two bodies have the same sha256 (the server would return the earlier material
without processing). 503 `busy` answers are counted apart; the client then waits the Retry-After it
was given, as the mini-program does.

Results are printed and written to the `## Materials (pipeline and upload)` section of
benchmarks/RESULTS.md; other sections are kept. The server, simulator, machine line, quiet wait,
CPU-noise and report plumbing is that of benchmarks/http_baseline.py and benchmarks/identity.py.
Exit codes: 0 done, 1 a measurement failed, 2 wrk missing or bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import itertools
import json
import multiprocessing
import os
import random
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (server with extra settings, simulator, citizen, CPU watch, PostgreSQL)

if TYPE_CHECKING:
    from PIL import Image

ROOT = hb.ROOT
HOST = hb.HOST
SECTION = "## Materials (pipeline and upload)"
UPLOAD_PATH = "/api/v1/materials"
RATE_LIMITS = "login.ip=100000/minute"
EMBEDDED, PRODUCTION = idb.EMBEDDED, idb.PRODUCTION
BACKENDS = [EMBEDDED, PRODUCTION]

PHONE_SIZE = (4000, 3000)
PHONE_QUALITY = 92
UPLOAD_SIZE = (1600, 1200)
UPLOAD_QUALITY = 76  # with the same noise, ~300 KB at 1600×1200
NOISE_SIGMA = 8.0  # per-channel sensor noise; ~1 MB per 3 megapixels at quality 92, like a phone photo
ORIENTATION = 6  # stored landscape, shown portrait: viewers turn it 90° clockwise
MAX_EDGE, THUMB_EDGE = 2000, 320
NAIVE_QUALITY, NAIVE_THUMB_QUALITY = 85, 80  # what media.process uses, so the bytes compare
# Equal output: the same pixel sizes (so the same orientation), no metadata, and at most this mean
# absolute difference per channel (0–255) between the two pipelines' pictures and thumbnails.
MAX_MEAN_DIFF = 3.0
SERVER_POOL = "2 threads + 4 queued"  # handlers.materials.Pipeline(), as server.py makes it


class Budget:
    """The run's time budget: quiet waits are cut to it and no measurement is repeated once it is
    spent, so the run ends by itself even on a busy machine (the rest is measured at once, flagged)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def quiet_wait(self, args: argparse.Namespace) -> None:
        limit = min(args.quiet_wait, self.left())
        if limit > 0:
            hb.wait_until_quiet(limit)


BUDGET = Budget(0)  # set in main()


def _import_app() -> None:
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))


# -- pictures ----------------------------------------------------------------------------------


def phone_exif(orientation: int = ORIENTATION) -> Image.Exif:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "PM-12 Pro"  # Model
    exif[0x0132] = "2026:11:22 10:15:30"  # DateTime
    exif[0x8825] = {1: "N", 2: (28.0, 52.0, 12.0), 3: "E", 4: (105.0, 26.0, 30.0)}  # GPS
    return exif


class PhotoMaker:
    """Photo-like pictures of one size: a scene (gradients, shapes, a printed page of text, slightly
    soft like a lens) and a larger per-channel noise field, both made once; each picture is the
    scene shifted by a random offset, a noise crop at another offset and a label of its own."""

    MARGIN = 64

    def __init__(self, size: tuple[int, int], seed: int = 20261122, sigma: float = NOISE_SIGMA):
        from PIL import Image, ImageDraw, ImageFilter, ImageFont

        self.size, self.rnd = size, random.Random(seed)
        width, height = size
        rnd = self.rnd
        bands = []
        for angle in (0, 90, 45):
            gradient = Image.linear_gradient("L").rotate(
                angle + rnd.uniform(-20, 20), resample=Image.Resampling.BICUBIC
            )
            bands.append(gradient.resize(size, Image.Resampling.BILINEAR))
        scene = Image.merge("RGB", bands)
        draw = ImageDraw.Draw(scene)
        for _ in range(40):
            x, y = rnd.randrange(width), rnd.randrange(height)
            w, h = rnd.randrange(width // 20, width // 3), rnd.randrange(height // 20, height // 3)
            colour = tuple(rnd.randrange(256) for _ in range(3))
            (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
        x0, y0 = width // 8, height // 6  # a printed page: lines of small text
        draw.rectangle((x0, y0, x0 + width // 2, y0 + height // 2), fill=(235, 232, 225))
        self.font = ImageFont.load_default(size=max(12, height // 60))
        line = max(14, height // 45)
        for y in range(y0 + line, y0 + height // 2 - line, line):
            words = (
                "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rnd.randrange(2, 9)))
                for _ in range(12)
            )
            draw.text((x0 + line, y), " ".join(words), fill=(20, 20, 30), font=self.font)
        self.scene = scene.filter(ImageFilter.GaussianBlur(0.8))
        field_size = (width + self.MARGIN, height + self.MARGIN)
        self.noise = [Image.effect_noise(field_size, sigma) for _ in range(3)]

    def picture(self, n: int) -> Image.Image:
        from PIL import Image, ImageChops, ImageDraw

        width, height = self.size
        rnd = random.Random(n)
        scene = ImageChops.offset(self.scene, rnd.randrange(width // 10), rnd.randrange(height // 10))
        draw = ImageDraw.Draw(scene)
        draw.text(
            (width // 20, height - height // 12),
            f"IMG_{n:04d}  {rnd.getrandbits(48):012x}",
            fill=(250, 250, 250),
            font=self.font,
        )
        dx, dy = rnd.randrange(self.MARGIN), rnd.randrange(self.MARGIN)
        box = (dx, dy, dx + width, dy + height)
        bands = [
            ImageChops.add(band, noise.crop(box), scale=1.0, offset=-128)  # noise centred on 128
            for band, noise in zip(scene.split(), self.noise, strict=False)
        ]
        return Image.merge("RGB", bands)

    def jpeg(self, n: int, quality: int) -> bytes:
        out = io.BytesIO()
        self.picture(n).save(out, "JPEG", quality=quality, exif=phone_exif())
        return out.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The JPEG with a comment (COM) segment right after SOI: other bytes, same picture."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


# -- the two pipelines (top level: they go to a process pool) ----------------------------------

Output = tuple[bytes, bytes, int, int]  # main JPEG, thumbnail JPEG, width, height


def run_fast(data: bytes) -> Output:
    from handlers.materials import pipeline as media

    p = media.process(data, max_edge=MAX_EDGE, thumb_edge=THUMB_EDGE)
    return p.data, p.thumbnail, p.width, p.height


def run_naive(data: bytes) -> Output:
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    im.load()  # the full decode
    im = ImageOps.exif_transpose(im)
    thumb = im.copy()
    thumb.thumbnail((THUMB_EDGE, THUMB_EDGE), Image.Resampling.LANCZOS)  # from the full image
    im.thumbnail((MAX_EDGE, MAX_EDGE), Image.Resampling.LANCZOS)
    out, small = io.BytesIO(), io.BytesIO()
    im.save(out, "JPEG", quality=NAIVE_QUALITY)
    thumb.save(small, "JPEG", quality=NAIVE_THUMB_QUALITY)
    return out.getvalue(), small.getvalue(), im.width, im.height


PIPELINES = {"media.process": run_fast, "naive Pillow": run_naive}


# -- part 1: the pipeline ----------------------------------------------------------------------


def own_jiffies() -> float:
    return idb.self_jiffies()


class PipelineWatch:
    """CPU used by others while this process (and the given pool workers) ran a measurement."""

    def __init__(self, worker_pids: list[int] | None = None):
        self.pids = worker_pids or []

    def __enter__(self) -> PipelineWatch:
        self.busy0, self.total0 = hb.machine_jiffies()
        self.ours0 = own_jiffies() + sum(idb.pid_jiffies(p) for p in self.pids)
        return self

    def __exit__(self, *exc) -> None:
        ours = own_jiffies() + sum(idb.pid_jiffies(p) for p in self.pids) - self.ours0
        busy1, total1 = hb.machine_jiffies()
        self.others = max(0.0, (busy1 - self.busy0 - ours) / max(1, total1 - self.total0))


@dataclass
class Mode:
    pipeline: str
    how: str  # "1 thread", "ThreadPoolExecutor(2)", "ProcessPoolExecutor(2)"
    per_image_ms: list[float] = field(default_factory=list)
    per_image_cpu_ms: list[float] = field(default_factory=list)  # this process's CPU time (process_time)
    images_per_s: float | None = None
    others_cpu: float = 0.0
    attempts: int = 1
    failed: str | None = None


def time_mode(pipeline: str, how: str, warm: list[bytes], images: list[bytes]) -> Mode:
    fn = PIPELINES[pipeline]
    mode = Mode(pipeline, how)
    if how == "1 thread":
        for data in warm:
            fn(data)
        with PipelineWatch() as watch:
            began = time.perf_counter()
            for data in images:
                t, cpu = time.perf_counter(), time.process_time()
                fn(data)
                mode.per_image_ms.append((time.perf_counter() - t) * 1000)
                mode.per_image_cpu_ms.append((time.process_time() - cpu) * 1000)
            wall = time.perf_counter() - began
    else:
        pool = (
            ThreadPoolExecutor(2)
            if how.startswith("Thread")
            else ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        )
        try:
            list(pool.map(fn, warm))  # also starts the workers
            pids = list(getattr(pool, "_processes", {}) or {})
            with PipelineWatch(pids) as watch:
                began = time.perf_counter()
                list(pool.map(fn, images))
                wall = time.perf_counter() - began
        finally:
            pool.shutdown(wait=True)
    mode.images_per_s = len(images) / wall
    mode.others_cpu = watch.others
    return mode


def measure_mode(pipeline: str, how: str, warm: list[bytes], images: list[bytes], args: argparse.Namespace) -> Mode:
    """A mode measured after a quiet wait; again (up to --retries) when other processes disturbed it."""
    attempts = []
    for attempt in range(args.retries + 1):
        BUDGET.quiet_wait(args)
        try:
            mode = time_mode(pipeline, how, warm, images)
        except Exception as exc:  # a pipeline bug must not hide the other rows
            mode = Mode(pipeline, how, failed=f"{type(exc).__name__}: {exc}".splitlines()[0][:160])
            print(f"  {pipeline}, {how}: FAILED: {mode.failed}", file=sys.stderr)
            attempts.append(mode)
            break
        attempts.append(mode)
        extra = ""
        if mode.per_image_ms:
            ms = sorted(mode.per_image_ms)
            extra = f", median {statistics.median(ms):.1f} ms, p95 {idb.percentile(ms, 95):.1f} ms"
        print(
            f"  {pipeline}, {how}: {mode.images_per_s:.2f} images/s{extra} "
            f"(other processes used {mode.others_cpu:.0%} of the CPU)",
            flush=True,
        )
        if mode.others_cpu <= hb.BUSY:
            break
        if not BUDGET.left():
            print("  the machine was not quiet, but the time budget is spent: keeping this", flush=True)
            break
        if attempt < args.retries:
            print("  the machine was not quiet: measuring again", flush=True)
    chosen = min(attempts, key=lambda m: (m.failed is not None, m.others_cpu))
    chosen.attempts = len(attempts)
    return chosen


def memory_child(pipeline: str, path: str) -> None:
    """Runs in a fresh process: the peak-RSS increase of handling one image, as JSON on stdout."""
    _import_app()
    from PIL import Image, ImageOps  # noqa: F401

    from handlers.materials import pipeline as media  # noqa: F401  (both pipelines start from the same imports)

    def hwm_kb() -> int:  # the kernel's peak RSS of this address space, a cross-check
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return -1

    data = Path(path).read_bytes()
    before, hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kb()
    main, thumb, width, height = PIPELINES[pipeline](data)
    after, hwm_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kb()
    print(
        json.dumps(
            {
                "before_kb": before,
                "after_kb": after,
                "hwm_before_kb": hwm_before,
                "hwm_after_kb": hwm_after,
                "width": width,
                "height": height,
                "bytes": len(main),
                "thumb_bytes": len(thumb),
            }
        )
    )


def measure_memory(pipeline: str, path: Path, runs: int) -> list[dict]:
    """`runs` fresh children, each started through `sh`: Linux carries the peak RSS of the process that
    calls execve into the new program's ru_maxrss, so a child exec'd straight from this script (hundreds
    of MB of pictures) would start from our peak; sh's own peak is a few MB."""
    out = []
    for _ in range(runs):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [hb.python_bin(), str(Path(__file__).resolve()), "--memory-child", pipeline, str(path)]
        done = subprocess.run(
            ["sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory child ({pipeline}) exited {done.returncode}: {done.stderr.strip()[-300:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


@dataclass
class OutputInfo:
    size: tuple[int, int]
    bytes_median: float
    thumb_size: tuple[int, int]
    thumb_bytes_median: float
    sizes_vary: bool  # not every image gave the same pixel sizes


def outputs(pipeline: str, images: list[bytes]) -> tuple[OutputInfo, list[Output]]:
    from PIL import Image

    results = [PIPELINES[pipeline](data) for data in images]
    sizes = {(w, h) for _, _, w, h in results}
    thumbs = {Image.open(io.BytesIO(t)).size for _, t, _, _ in results}
    first = results[0]
    info = OutputInfo(
        (first[2], first[3]),
        statistics.median(len(r[0]) for r in results),
        Image.open(io.BytesIO(first[1])).size,
        statistics.median(len(r[1]) for r in results),
        len(sizes) > 1 or len(thumbs) > 1,
    )
    return info, results


def mean_abs_diff(a: bytes, b: bytes) -> float | None:
    """Mean absolute difference per channel (0–255) of two JPEGs of the same size."""
    from PIL import Image, ImageChops, ImageStat

    x, y = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    if x.size != y.size:
        return None
    return sum(ImageStat.Stat(ImageChops.difference(x, y)).mean) / 3


def output_differences(report: PipelineReport, fast: Output) -> list[str]:
    """What keeps media.process's output from being equal to the naive one's (empty: equal)."""
    from PIL import Image

    problems = []
    f, n = report.outputs["media.process"], report.outputs["naive Pillow"]
    if (f.size, f.thumb_size) != (n.size, n.thumb_size):
        problems.append(f"sizes {f.size} and {f.thumb_size} against {n.size} and {n.thumb_size}")
    for what, diff in (("picture", report.diff), ("thumbnail", report.thumb_diff)):
        if diff is None or diff > MAX_MEAN_DIFF:
            problems.append(f"{what}: mean difference {diff} (bound {MAX_MEAN_DIFF})")
    for what, data in (("picture", fast[0]), ("thumbnail", fast[1])):
        with Image.open(io.BytesIO(data)) as im:
            if im.getexif() or {"exif", "icc_profile", "xmp", "comment"} & set(im.info):
                problems.append(f"{what}: metadata left ({sorted(im.info)})")
    return problems


def stage_times(images: list[bytes]) -> dict[str, dict[str, float]]:
    """Median ms of each step, both pipelines, done step by step as they do it (media's own helpers
    for media.process): explains the speed-up factor."""
    from PIL import Image, ImageOps

    from handlers.materials import pipeline as media

    fast: dict[str, list[float]] = {}
    naive: dict[str, list[float]] = {}

    def lap(bucket: dict[str, list[float]], name: str, began: float) -> float:
        now = time.perf_counter()
        bucket.setdefault(name, []).append((now - began) * 1000)
        return now

    for data in images:
        t = time.perf_counter()
        im, original, turn = media._decode(data, media.JPEG, max_edge=MAX_EDGE, max_pixels=40_000_000)
        im = media._resize_to(im, MAX_EDGE)
        t = lap(fast, "decode (draft) + resize", t)
        small, box = media._reduced(im, max(media.QUALITY_EDGE, 2 * THUMB_EDGE))
        t = lap(fast, "reduced copy", t)
        upright = media._turn(im, turn)
        t = lap(fast, "transpose", t)
        media._encode_jpeg(upright, media.JPEG_QUALITY)
        t = lap(fast, "encode", t)
        thumb = media._thumbnail(small, box, upright.size, THUMB_EDGE, turned=media._swaps(turn))
        media._encode_jpeg(media._turn(thumb, turn), media.THUMB_QUALITY)
        t = lap(fast, "thumbnail", t)
        media.quality_warnings(media._turn(media._hint_gray(small), turn), original)
        lap(fast, "quality hints", t)

        t = time.perf_counter()
        full = Image.open(io.BytesIO(data))
        full.load()
        t = lap(naive, "decode (full)", t)
        full = ImageOps.exif_transpose(full)
        t = lap(naive, "transpose", t)
        small = full.copy()
        small.thumbnail((THUMB_EDGE, THUMB_EDGE), Image.Resampling.LANCZOS)
        small.save(io.BytesIO(), "JPEG", quality=NAIVE_THUMB_QUALITY)
        t = lap(naive, "thumbnail", t)
        full.thumbnail((MAX_EDGE, MAX_EDGE), Image.Resampling.LANCZOS)
        t = lap(naive, "resize", t)
        full.save(io.BytesIO(), "JPEG", quality=NAIVE_QUALITY)
        lap(naive, "encode", t)
    return {
        "media.process": {k: statistics.median(v) for k, v in fast.items()},
        "naive Pillow": {k: statistics.median(v) for k, v in naive.items()},
    }


@dataclass
class PipelineReport:
    modes: list[Mode] = field(default_factory=list)
    outputs: dict[str, OutputInfo] = field(default_factory=dict)
    memory: dict[str, list[dict]] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    input_bytes: list[int] = field(default_factory=list)
    warm: int = 0
    diff: float | None = None
    thumb_diff: float | None = None
    generated_s: float = 0.0
    failed: str | None = None
    notes: list[str] = field(default_factory=list)


def run_pipeline(workdir: Path, args: argparse.Namespace) -> PipelineReport:
    report = PipelineReport()
    began = time.monotonic()
    maker = PhotoMaker(PHONE_SIZE)
    warm = [maker.jpeg(1000 + n, PHONE_QUALITY) for n in range(4)]
    images = [maker.jpeg(n, PHONE_QUALITY) for n in range(args.images)]
    del maker
    report.generated_s = time.monotonic() - began
    report.input_bytes = [len(d) for d in images]
    report.warm = len(warm)
    sizes = sorted(report.input_bytes)
    print(
        f"- pipeline: {len(images)} + {len(warm)} warm-up phone JPEGs {PHONE_SIZE[0]}×{PHONE_SIZE[1]} q{PHONE_QUALITY} "
        f"made in {report.generated_s:.1f} s, {sizes[0] / 1e6:.2f}–{sizes[-1] / 1e6:.2f} MB "
        f"(median {statistics.median(sizes) / 1e6:.2f} MB)",
        flush=True,
    )
    try:
        for name in PIPELINES:
            report.outputs[name], _ = outputs(name, images[:3])
        _, fast_out = outputs("media.process", images[:1])
        _, naive_out = outputs("naive Pillow", images[:1])
        report.diff = mean_abs_diff(fast_out[0][0], naive_out[0][0])
        report.thumb_diff = mean_abs_diff(fast_out[0][1], naive_out[0][1])
        unequal = output_differences(report, fast_out[0])
        if unequal:
            raise RuntimeError(f"media.process does not give the naive pipeline's output: {'; '.join(unequal)}")
        for name, info in report.outputs.items():
            print(
                f"  {name}: {info.size[0]}×{info.size[1]} {info.bytes_median / 1e3:.0f} kB, thumbnail "
                f"{info.thumb_size[0]}×{info.thumb_size[1]} {info.thumb_bytes_median / 1e3:.1f} kB",
                flush=True,
            )
        for how in ("1 thread", "ThreadPoolExecutor(2)", "ProcessPoolExecutor(2)"):
            for name in PIPELINES:
                report.modes.append(measure_mode(name, how, warm, images, args))
        sample = workdir / "phone.jpg"
        sample.write_bytes(images[0])
        for name in PIPELINES:
            report.memory[name] = measure_memory(name, sample, args.memory_runs)
            increases = sorted((m["after_kb"] - m["before_kb"]) / 1024 for m in report.memory[name])
            print(
                f"  {name}: peak RSS increase {statistics.median(increases):.0f} MB "
                f"(runs: {', '.join(f'{x:.0f}' for x in increases)})",
                flush=True,
            )
        try:
            report.stages = stage_times(images[: min(10, len(images))])
        except Exception as exc:  # media's helpers renamed: the breakdown is a bonus, not a result
            report.notes.append(f"step breakdown not measured: {type(exc).__name__}: {exc}")
    except Exception as exc:
        report.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  pipeline FAILED: {exc}", file=sys.stderr)
    return report


# -- part 2: uploads through the server --------------------------------------------------------


def multipart(boundary: str, kind: str, jpeg: bytes, filename: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode()


@dataclass
class UploadRun:
    latencies: list[float] = field(default_factory=list)  # seconds, answered 201
    busy_latencies: list[float] = field(default_factory=list)  # seconds, answered 503
    outcomes: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    first_body: dict | None = None
    sent: int = 0


async def drive_uploads(
    base: str, header: str, jpegs: list[bytes], concurrency: int, seconds: float, kind: str, tag: str
) -> UploadRun:
    """`concurrency` workers upload distinct JPEGs for `seconds`; each body is made just before it is sent
    (one concatenation: a unique comment segment in front of one of the pre-made JPEGs)."""
    import httpx

    run = UploadRun()
    boundary = "zbbench" + secrets.token_hex(12)
    name, value = header.split(": ", 1)
    headers = {name: value, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                i = next(counter)
                jpeg = with_comment(jpegs[i % len(jpegs)], f"zbbench {tag} {i} {secrets.token_hex(4)}")
                body = multipart(boundary, kind, jpeg, f"IMG_{i:05d}.jpg")
                run.sent += 1
                began = time.perf_counter()
                try:
                    response = await client.post(UPLOAD_PATH, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    run.outcomes[type(exc).__name__] += 1
                    continue
                took = time.perf_counter() - began
                if response.status_code == 201:
                    run.latencies.append(took)
                    run.outcomes["201"] += 1
                    if run.first_body is None:
                        run.first_body = response.json()
                    continue
                try:
                    code = response.json().get("code", "?")
                except ValueError:
                    code = "not JSON"
                run.outcomes[f"{response.status_code} {code}"] += 1
                if response.status_code == 503:
                    run.busy_latencies.append(took)
                    try:
                        wait = float(response.headers.get("retry-after", "1"))
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - began
    return run


@dataclass
class UploadRow:
    backend: str
    concurrency: int
    rps: float | None = None  # 201 answers per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    answered: int = 0
    created: int = 0
    busy: int = 0
    other: dict[str, int] = field(default_factory=dict)
    rows_in_db: int | None = None
    busy_all: int = 0  # 503s including the warm-up's
    attempts: int = 1
    others_cpu: float = 0.0
    shares: str = ""
    wall_s: float = 0.0
    failed: str | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class UploadBackend:
    backend: str
    rows: list[UploadRow] = field(default_factory=list)
    start_s: float | None = None
    stop_s: float | None = None
    log_problems: list[str] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)
    check: str = ""
    busy_total: int = 0  # 503 answers the client got from this server, every attempt and warm-up


def count_rows(backend: str, server: idb.IdentityServer, db_url: str | None, kind: str) -> int:
    sql = f"SELECT COUNT(*) FROM materials WHERE kind = '{kind}'"
    if backend == EMBEDDED:
        with sqlite3.connect(server.workdir / "var" / "zb.sqlite3", timeout=10) as conn:
            return int(conn.execute(sql).fetchone()[0])
    return int(asyncio.run(idb._pg(sql, db_url, fetch=True))[0][0])


def measure_uploads(
    backend: str,
    server: idb.IdentityServer,
    citizen: idb.Citizen,
    jpegs: list[bytes],
    concurrency: int,
    kind: str,
    db_url: str | None,
    watch_cpu,
    args: argparse.Namespace,
) -> UploadRow:
    row = UploadRow(backend, concurrency)
    try:
        BUDGET.quiet_wait(args)
        header = citizen.header(args.upload_warmup + args.upload_duration + 120)
        warm = asyncio.run(
            drive_uploads(server.base, header, jpegs, concurrency, args.upload_warmup, "bench_warm", f"{kind}-warm")
        )
        with watch_cpu() as watch:
            timed = asyncio.run(
                drive_uploads(server.base, header, jpegs, concurrency, args.upload_duration, kind, kind)
            )
        row.others_cpu, row.shares = watch.others(), watch.shares()
        row.rows_in_db = count_rows(backend, server, db_url, kind)
    except Exception as exc:  # httpx, asyncpg, sqlite3 or our own: the row says what went wrong
        row.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  uploads ×{concurrency}: FAILED: {exc}", file=sys.stderr)
        return row
    row.wall_s = timed.wall_s
    row.answered = sum(v for k, v in timed.outcomes.items() if k[:1].isdigit())
    row.created = timed.outcomes["201"]
    row.busy = sum(v for k, v in timed.outcomes.items() if k.startswith("503"))
    row.other = {k: v for k, v in timed.outcomes.items() if k != "201" and not k.startswith("503")}
    latencies = sorted(timed.latencies)
    if latencies:
        row.rps = len(latencies) / timed.wall_s
        row.p50_ms, row.p99_ms = idb.percentile(latencies, 50) * 1000, idb.percentile(latencies, 99) * 1000
    else:
        row.failed = f"no upload answered 201: {dict(timed.outcomes)}"
    body = timed.first_body or {}
    expected = (UPLOAD_SIZE[1], UPLOAD_SIZE[0]) if ORIENTATION in (5, 6, 7, 8) else UPLOAD_SIZE
    if body and ((body.get("width"), body.get("height")) != expected or body.get("mime") != "image/jpeg"):
        row.notes.append(
            f"the first 201 says {body.get('mime')} {body.get('width')}×{body.get('height')}, "
            f"expected image/jpeg {expected[0]}×{expected[1]}"
        )
    if row.rows_in_db != row.created:
        row.notes.append(f"the database has {row.rows_in_db} '{kind}' materials for {row.created} 201 answers")
    warm_errors = {k: v for k, v in warm.outcomes.items() if k != "201"}
    row.busy_all = row.busy + sum(v for k, v in warm.outcomes.items() if k.startswith("503"))
    busy_ms = sorted(timed.busy_latencies)
    row.notes.append(
        f"{row.created} of {row.answered} timed uploads answered 201 in {timed.wall_s:.1f} s"
        + (
            f", {row.busy} answered 503 busy ({row.busy / max(1, row.answered):.1%}; median "
            f"{idb.percentile(busy_ms, 50) * 1000:.1f} ms to get it)"
            if row.busy
            else ", none 503"
        )
        + f"; other answers: {', '.join(f'{k} ×{v}' for k, v in sorted(row.other.items())) or 'none'}"
        + f"; warm-up: {warm.outcomes['201']} × 201"
        + (f", {', '.join(f'{k} ×{v}' for k, v in sorted(warm_errors.items()))}" if warm_errors else "")
        + f"; materials rows of the timed run in the database: {row.rows_in_db}; CPU used, in shares of one core: "
        f"{row.shares}"
    )
    print(
        f"  uploads, {concurrency} in flight: {hb.fmt(row.rps, 1)} 201/s, p50 {hb.fmt(row.p50_ms, 1)} ms, "
        f"p99 {hb.fmt(row.p99_ms, 1)} ms; {row.notes[-1]}; other processes used {row.others_cpu:.0%} of the CPU",
        flush=True,
    )
    return row


def login(server: idb.IdentityServer, sim: idb.Simulator) -> idb.Citizen:
    import httpx

    minted = sim.control("login-code", {"appid": idb.SIM_APPID})
    response = httpx.post(server.base + idb.LOGIN_PATH, json={"code": minted["code"]}, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"set-up login answered {response.status_code}: {response.text[:200]}")
    return idb.Citizen(server.base, response.json())


def run_backend(
    backend: str,
    workdir: Path,
    prefix: str,
    sim: idb.Simulator,
    jpegs: list[bytes],
    args: argparse.Namespace,
    servers: list[idb.IdentityServer],
) -> UploadBackend:
    run = UploadBackend(backend)
    extra = {
        "WECHAT_API_BASE": sim.url,
        "WECHAT_MP_APPID": idb.SIM_APPID,
        "WECHAT_MP_SECRET": idb.SIM_SECRET,
        "RATE_LIMITS": RATE_LIMITS,
    }
    concurrencies = [args.concurrency] + ([args.overload] if args.overload else [])
    db_name = db_url = None
    production = backend == PRODUCTION
    if production:
        db_name = f"zbbench_{secrets.token_hex(4)}"
        try:
            asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
        except Exception as exc:
            why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            print(f"  FAILED: {why}", file=sys.stderr)
            run.rows = [UploadRow(backend, c, failed=why) for c in concurrencies]
            return run
        db_url = idb.pg_url_for(db_name)
        extra.update(DATABASE_URL=db_url, TASK_BROKER="memory")
    server = idb.IdentityServer(hb.Target(backend, "zhangban", 1, redis=production), workdir, prefix, extra)
    servers.append(server)
    print(f"- {backend} on port {server.port}: starting", flush=True)
    try:
        run.start_s = server.start()
        citizen = login(server, sim)
        import httpx

        probe = httpx.post(
            server.base + UPLOAD_PATH,
            headers=dict([citizen.header(60).split(": ", 1)]),
            files={"file": ("probe.jpg", with_comment(jpegs[0], "probe"), "image/jpeg")},
            data={"kind": "bench_probe"},
            timeout=60,
        )
        if probe.status_code != 201:
            raise RuntimeError(f"the probe upload answered {probe.status_code}: {probe.text[:200]}")
        body = probe.json()
        run.check = (
            f"probe upload: 201, {body['mime']} {body['width']}×{body['height']}, {body['size'] / 1e3:.0f} kB "
            f"stored, quality warnings {[w['code'] for w in body['quality_warnings']] or 'none'}"
        )
        print(f"  answering after {run.start_s:.1f} s; citizen signed in; {run.check}", flush=True)
        groups = {"server": server.proc.pid, "simulator": sim.proc.pid}
        services = idb.production_services(db_name) if production else None

        def watch_cpu() -> idb.CpuWatch:
            return idb.CpuWatch(groups, services)

        for n, concurrency in enumerate(concurrencies):
            attempts: list[UploadRow] = []
            for attempt in range(args.retries + 1):
                row = measure_uploads(
                    backend,
                    server,
                    citizen,
                    jpegs,
                    concurrency,
                    f"bench_c{concurrency}_{n}_{attempt}",
                    db_url,
                    watch_cpu,
                    args,
                )
                attempts.append(row)
                if row.failed or row.others_cpu <= hb.BUSY:
                    break
                if not BUDGET.left():
                    print("  the machine was not quiet, but the time budget is spent: keeping this", flush=True)
                    break
                if attempt < args.retries:
                    print("  the machine was not quiet: measuring again", flush=True)
            chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
            chosen.attempts = len(attempts)
            run.busy_total += sum(r.busy_all for r in attempts)
            run.rows.append(chosen)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        why = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.concurrency for r in run.rows}
        run.rows += [UploadRow(backend, c, failed=why) for c in concurrencies if c not in done]
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        if db_name:
            try:
                asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                run.cleanup.append(f"dropped PostgreSQL database {db_name}")
            except Exception as exc:
                run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        if production:
            run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for line in run.log_problems[:5]:
            print(f"  log: {line[:300]}")
        if len(run.log_problems) > 5:
            print(f"  log: ... {len(run.log_problems) - 5} more problem line(s)")
    return run


# -- report ------------------------------------------------------------------------------------


def pipeline_tables(report: PipelineReport) -> list[str]:
    if report.failed and not report.modes:
        return [f"Pipeline: failed: {report.failed}"]
    by = {(m.pipeline, m.how): m for m in report.modes}
    lines = [
        "| pipeline | ms/image median | ms/image p95 | images/s, 1 thread | images/s, 2 threads | "
        "images/s, 2 processes | output | output kB | thumbnail | thumbnail kB | peak RSS increase MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for name in PIPELINES:
        single = by.get((name, "1 thread"))
        ms = sorted(single.per_image_ms) if single and single.per_image_ms else []

        def rate(how: str, name: str = name) -> str:
            m = by.get((name, how))
            return "—" if m is None or m.images_per_s is None else f"{m.images_per_s:.2f}"

        info = report.outputs.get(name)
        memory = report.memory.get(name, [])
        increases = sorted((m["after_kb"] - m["before_kb"]) / 1024 for m in memory)
        lines.append(
            f"| {name} | {f'{statistics.median(ms):.1f}' if ms else '—'} | "
            f"{f'{idb.percentile(ms, 95):.1f}' if ms else '—'} | {rate('1 thread')} | "
            f"{rate('ThreadPoolExecutor(2)')} | {rate('ProcessPoolExecutor(2)')} | "
            + (
                f"{info.size[0]}×{info.size[1]} | {info.bytes_median / 1e3:.0f} | {info.thumb_size[0]}×{info.thumb_size[1]} | "
                f"{info.thumb_bytes_median / 1e3:.1f} | "
                if info
                else "— | — | — | — | "
            )
            + (f"{statistics.median(increases):.0f} |" if increases else "— |")
        )
    fast = {m.how: m for m in report.modes if m.pipeline == "media.process" and m.images_per_s}
    naive = {m.how: m for m in report.modes if m.pipeline == "naive Pillow" and m.images_per_s}
    factors = [f"{how}: {fast[how].images_per_s / naive[how].images_per_s:.2f}×" for how in fast if how in naive]
    f1, n1 = fast.get("1 thread"), naive.get("1 thread")
    if f1 and n1 and f1.per_image_ms and n1.per_image_ms:
        factors.insert(
            0, f"median ms per image: {statistics.median(n1.per_image_ms) / statistics.median(f1.per_image_ms):.2f}×"
        )
    if f1 and n1 and f1.per_image_cpu_ms and n1.per_image_cpu_ms:
        # CPU time is what a busy shared machine disturbs least: wall time also counts the waits.
        fc, nc = statistics.median(f1.per_image_cpu_ms), statistics.median(n1.per_image_cpu_ms)
        factors.insert(1, f"median CPU ms per image (process_time, {fc:.1f} against {nc:.1f}): {nc / fc:.2f}×")
    lines += ["", f"Speed-up of media.process over naive Pillow (target ≥ 5×): {'; '.join(factors) or '—'}."]
    if report.stages:
        lines += [
            "",
            "Where the time goes (median ms per step, the same steps timed one by one on "
            f"{min(10, len(report.input_bytes))} of the images, one thread):",
            "",
        ]
        for name, steps in report.stages.items():
            lines.append(
                f"- {name}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
                + f" (sum {sum(steps.values()):.1f})"
            )
    return lines


def upload_table(backends: list[UploadBackend]) -> list[str]:
    lines = [
        "| backend | uploads in flight | 201/s | p50 ms | p99 ms | 201 | 503 busy | 503 share | other answers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for b in backends:
        for r in b.rows:
            if r.failed or r.skipped:
                why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
                lines.append(f"| {r.backend} | {r.concurrency} | {why} | — | — | — | — | — | — |")
                continue
            other = ", ".join(f"{k} ×{v}" for k, v in sorted(r.other.items())) or "none"
            lines.append(
                f"| {r.backend} | {r.concurrency} | {hb.fmt(r.rps, 1)} | {hb.fmt(r.p50_ms, 1)} | "
                f"{hb.fmt(r.p99_ms, 1)} | {r.created} | {r.busy} | {r.busy / max(1, r.answered):.1%} | {other} |"
            )
    return lines


BUSY_LOG = f"WARNING zhangban.http: busy on POST {UPLOAD_PATH}"


def log_summary(b: UploadBackend) -> str:
    """The server's warning/error lines grouped; the `busy` warnings are checked against the 503s counted."""
    if not b.log_problems:
        return "no warning or error in the server's log"
    groups = Counter(line[:240] for line in b.log_problems)
    parts = []
    for line, n in groups.most_common():
        if line == BUSY_LOG:
            same = "the same as" if n == b.busy_total else "NOT the same as"
            parts.append(f"{n} × `{line}` ({same} the {b.busy_total} 503 answers the client got, warm-ups included)")
        else:
            parts.append(f"{n} × `{line}`")
    return "the server's log has " + "; ".join(parts)


def memory_runs(runs: list[dict]) -> str:
    increases = ", ".join(f"{(m['after_kb'] - m['before_kb']) / 1024:.0f}" for m in runs)
    hwm = ", ".join(f"{(m['hwm_after_kb'] - m['hwm_before_kb']) / 1024:.0f}" for m in runs)
    return (
        f"{increases} MB (VmHWM increase: {hwm} MB; the whole child at its peak: "
        f"{max(m['after_kb'] for m in runs) / 1024:.0f} MB)"
    )


def section(
    report: PipelineReport,
    backends: list[UploadBackend],
    upload_info: str,
    sim_problems: list[str],
    args: argparse.Namespace,
    machine: str,
    when: str,
) -> str:
    sizes = sorted(report.input_bytes)
    pil = "?"
    try:
        import PIL
        from PIL import features

        pil = f"Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo') or 'no'}"
    except Exception:  # noqa: BLE001
        pass
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/materials.py`"
        + (f" `{' '.join(sys.argv[1:])}`" if sys.argv[1:] else "")
        + ".",
        "",
        "### Pipeline: 12-megapixel phone photo, `handlers.materials.pipeline.process` vs naive Pillow",
        "",
        *pipeline_tables(report),
        "",
        f"- Input: {len(sizes)} distinct generated phone photos, {PHONE_SIZE[0]}×{PHONE_SIZE[1]}, JPEG quality "
        f"{PHONE_QUALITY} with EXIF (Orientation {ORIENTATION}, make, model, time, GPS): gradients, 40 shapes, a printed "
        f"page of small text, a slight blur and per-channel Gaussian noise (σ {NOISE_SIGMA:g}), so they compress like "
        + (
            f"photos: {sizes[0] / 1e6:.2f}–{sizes[-1] / 1e6:.2f} MB, median {statistics.median(sizes) / 1e6:.2f} MB. "
            if sizes
            else "photos. "
        )
        + "Both pipelines get the same bytes.",
        f"- *media.process*: `process(data, max_edge={MAX_EDGE}, thumb_edge={THUMB_EDGE})` (draft decode at the "
        "largest DCT scale that still covers 2000 px in libjpeg's draft mode, sRGB, baseline JPEG q85 without "
        "metadata, thumbnail q80 and quality hints from one box-reduced copy, each picture turned upright by its EXIF "
        "orientation at its own final size; the module keeps 2 freed Pillow pixel blocks for reuse, "
        "`PILLOW_BLOCKS_MAX` 2, which the naive pipeline in the same process gets too). *naive Pillow*: `Image.open` + `load()` (full "
        "decode), `ImageOps.exif_transpose`, a copy `thumbnail((320, 320), LANCZOS)` saved as JPEG q80 (from the full "
        "image), `thumbnail((2000, 2000), LANCZOS)` saved as JPEG q85 (Pillow's default `reducing_gap=2.0`; "
        "Pillow's `save` writes no EXIF unless asked, so both outputs carry none).",
        f"- ms/image: one thread, each of the {len(sizes)} images once after {report.warm} warm-up images, wall time per "
        "call; p95 is nearest-rank. images/s: the same images through one thread, `ThreadPoolExecutor(2)` and "
        "`ProcessPoolExecutor(2)` (fork; workers warmed up first, the output bytes come back to the parent), "
        "images / wall time. The output columns are of the first three images (bytes: median)"
        + (
            "; all upright (portrait, the EXIF orientation applied)."
            if report.outputs and all(i.size[1] > i.size[0] for i in report.outputs.values())
            else "."
        )
        + (
            f" Mean absolute difference between the two pipelines' outputs of the first image: "
            f"{report.diff:.2f} per channel (0–255) for the 2000 px picture"
            + (f", {report.thumb_diff:.2f} for the thumbnail" if report.thumb_diff is not None else "")
            + f" (equal output: same sizes, no metadata, at most {MAX_MEAN_DIFF:g} each)."
            if report.diff is not None
            else ""
        ),
        f"- Peak memory: a fresh child process per measurement (`benchmarks/materials.py --memory-child`), "
        "started through `sh -c` (Linux carries the peak RSS of the process calling execve into the new "
        "program's `ru_maxrss`; `sh` keeps this script's own peak out of it), "
        "which imports `handlers.materials.pipeline` and Pillow and reads the first image's bytes, then takes "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss`, handles that one image and takes it again; the column is "
        f"the increase, median of {args.memory_runs} children per pipeline"
        + "".join(f"; {name}: {memory_runs(runs)}" for name, runs in report.memory.items())
        + ".",
        f"- {pil}.",
        "",
        "### Upload end to end: `POST /api/v1/materials`",
        "",
        *upload_table(backends),
        "",
        "- Servers: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, each started fresh on a free 127.0.0.1 port "
        f"in an empty temporary directory (its `var/media` holds the sealed files), `RATE_LIMITS={RATE_LIMITS}`, "
        "pointed at the WeChat simulator running as its own process (`python -m wechat.simulator`). "
        f"*{EMBEDDED}*: the default. *{PRODUCTION}*: a fresh database on `{idb.PG_ADMIN_URL}` (dropped afterwards), "
        f"`REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (its keys deleted afterwards), random "
        "`SECRET_KEY` and `FIELD_ENCRYPTION_KEY`, `TASK_BROKER=memory`. Media pool of the server: "
        f"{SERVER_POOL} (`handlers.materials.Pipeline`).",
        f"- Client: {upload_info} One citizen (signed in with a wx.login code from the simulator, L1) uploads with "
        "asyncio + httpx over keep-alive connections: multipart `kind` + `file` (`IMG_n.jpg`, image/jpeg), the body "
        "built just before it is sent from one of the pre-made JPEGs with a unique JPEG comment segment in front "
        "(distinct sha256, same picture), so the server never takes the de-duplication shortcut (a 200 would show "
        f"it). Each row: a {args.upload_warmup} s warm-up at the same concurrency, then {args.upload_duration} s "
        "timed; 201/s = uploads answered 201 / wall time (until the last answer); p50/p99 over the 201 answers, "
        "measured in the client. A 503 `busy` is counted apart and that worker waits the Retry-After it was "
        "given (cut at the end of the run) before its next upload. "
        f"The main rows run {args.concurrency} uploads in flight: the server's media pool admits "
        f"{SERVER_POOL.split()[0]} + {SERVER_POOL.split()[3]} = 6, so at 6 or fewer no upload can be refused"
        + (f"; the rows at {args.overload} show what happens beyond it." if args.overload else "."),
        "- Each upload: streamed multipart parse, sha256 and a database look-up for the same file, "
        "`media.process` in the pool (1600×1200, no resize, EXIF transpose → 1200×1600), both files sealed "
        "(encrypted) and written under `var/media`, a `materials` row, signed URLs in the answer. The script checks "
        "that the database holds one row per 201.",
        f"- Machine: {machine}.",
        "- The client, the simulator and the server share the 2 cores, and so do the pool runs with their own "
        "process: read the numbers as ceilings of this machine, not of production hardware; compare rows within "
        "one run.",
    ]
    measured = [m.others_cpu for m in report.modes if m.images_per_s] + [
        r.others_cpu for b in backends for r in b.rows if r.rps is not None
    ]
    if measured:
        body.append(
            f"- Other processes used at most {max(measured):.0%} of the CPU during the measured runs (rows "
            f"above {hb.BUSY:.0%} are flagged below; rows are measured again, up to {args.retries} "
            "times, when disturbed, keeping the least disturbed attempt). Before each measurement the script "
            f"waits up to {args.quiet_wait:g} s until the machine has been idle for 5 s in a row; after "
            f"{args.budget:g} s (`--budget`) it neither waits nor measures again. Counted as ours: this script (and its pool "
            "workers), the server, the simulator and, in production mode, the PostgreSQL backends of the "
            "benchmark's database and the whole redis-server process."
        )
    starts = ", ".join(f"{b.backend}: {b.start_s:.1f} s" for b in backends if b.start_s is not None)
    if starts:
        body.append(f"- Time from start to the first 200 on /healthz (includes migrations): {starts}.")
    notes = list(report.notes)
    for m in report.modes:
        if m.attempts > 1:
            notes.append(
                f"{m.pipeline}, {m.how}: measured {m.attempts} times because other processes disturbed it; "
                "the least disturbed attempt is shown"
            )
        if m.others_cpu > hb.BUSY:
            notes.append(
                f"{m.pipeline}, {m.how}: other processes used {m.others_cpu:.0%} of the CPU: its numbers are low"
            )
        if m.failed:
            notes.append(f"{m.pipeline}, {m.how}: failed: {m.failed}")
    for name, info in report.outputs.items():
        if info.sizes_vary:
            notes.append(f"{name}: the output sizes differ between images")
    for b in backends:
        if b.check:
            notes.append(f"{b.backend}: {b.check}")
        for r in b.rows:
            name = f"uploads ×{r.concurrency}, {r.backend}"
            if r.attempts > 1:
                notes.append(
                    f"{name}: measured {r.attempts} times because other processes disturbed it; "
                    "the least disturbed attempt is shown"
                )
            if r.others_cpu > hb.BUSY:
                notes.append(f"{name}: other processes used {r.others_cpu:.0%} of the CPU: its numbers are low")
            notes += [f"{name}: {n}" for n in r.notes]
        notes.append(f"{b.backend}: {log_summary(b)}")
        if b.stop_s is not None and b.stop_s > 5:
            notes.append(f"{b.backend}: the server took {b.stop_s:.1f} s to stop")
    if sim_problems:
        notes.append(
            f"WeChat simulator: {len(sim_problems)} error line(s) in its log, first: `{sim_problems[0][:240]}`"
        )
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Materials: the image pipeline against naive Pillow, and uploads end to end (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--images", type=int, default=30, help="timed phone photos per pipeline, at least 30 (default 30)"
    )
    parser.add_argument(
        "--memory-runs",
        type=hb.positive,
        default=3,
        help="child processes per pipeline for the peak memory (default 3)",
    )
    parser.add_argument(
        "--upload-duration", type=hb.positive, default=15, help="seconds of each timed upload run (default 15)"
    )
    parser.add_argument("--upload-warmup", type=hb.positive, default=3, help="seconds of upload warm-up (default 3)")
    parser.add_argument(
        "--concurrency",
        type=hb.positive,
        default=6,
        help="uploads in flight in the main rows (default 6: what the server's media pool admits)",
    )
    parser.add_argument(
        "--overload",
        type=int,
        default=8,
        help="a second row per backend with this many uploads in flight, to show the 503s; 0: none (default 8)",
    )
    parser.add_argument(
        "--upload-images",
        type=hb.positive,
        default=8,
        help="distinct pre-made 1600×1200 JPEGs the uploads cycle through (default 8)",
    )
    parser.add_argument("--no-production", action="store_true", help="skip the PostgreSQL + Redis backend")
    parser.add_argument("--no-pipeline", action="store_true", help="skip part 1 (the in-process pipeline)")
    parser.add_argument("--no-upload", action="store_true", help="skip part 2 (uploads through the server)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="S",
        help="before each measurement, wait up to S seconds for other processes to go idle (default 120)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a row again, up to N times, when other processes disturbed it (default 2)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420,
        metavar="S",
        help="after S seconds no more quiet waits or repeated measurements: what is left is measured "
        "at once, so the run ends within about S + 3 minutes (default 420)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers' and simulator's output into DIR"
    )
    parser.add_argument("--memory-child", nargs=2, metavar=("PIPELINE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return args
    if args.images < 30:
        parser.error("--images: at least 30")
    if args.retries < 0 or args.overload < 0:
        parser.error("--retries and --overload cannot be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    if shutil.which("wrk") is None:  # only for the machine line (http_baseline's), kept for the same exit code
        print(
            "wrk is not installed (the machine line of every benchmark names its version).\n"
            "Install it from Debian's packages:  apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, hb._raise_interrupt)
    _import_app()
    global BUDGET
    BUDGET = Budget(args.budget)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Materials benchmark, {when}\n{machine}\n")
    if args.no_production or args.no_upload:
        skip = "--no-production" if args.no_production else "--no-upload"
    elif not hb.redis_answers():
        skip = f"no Redis on {HOST}:{hb.REDIS_PORT}"
    else:
        skip = idb.pg_answers()

    report = PipelineReport(failed="--no-pipeline" if args.no_pipeline else None)
    backends: list[UploadBackend] = []
    servers: list[idb.IdentityServer] = []
    sim_problems: list[str] = []
    upload_info = ""
    interrupted = False
    prefix = f"zbbench{secrets.token_hex(4)}:"
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-materials-")
    sim = idb.Simulator(Path(tmp.name))
    try:
        if not args.no_pipeline:
            report = run_pipeline(Path(tmp.name), args)
        if not args.no_upload:
            maker = PhotoMaker(UPLOAD_SIZE, seed=7)
            jpegs = [maker.jpeg(n, UPLOAD_QUALITY) for n in range(args.upload_images)]
            del maker
            sizes = sorted(len(j) for j in jpegs)
            upload_info = (
                f"{len(jpegs)} distinct generated {UPLOAD_SIZE[0]}×{UPLOAD_SIZE[1]} JPEGs (same recipe as "
                f"above, quality {UPLOAD_QUALITY}, the same EXIF), {sizes[0] / 1e3:.0f}–{sizes[-1] / 1e3:.0f} kB."
            )
            print(f"- uploads: {upload_info}", flush=True)
            print(f"WeChat simulator on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
            for n, backend in enumerate(BACKENDS):
                if backend == PRODUCTION and skip:
                    print(f"- {backend}: skipped ({skip})")
                    b = UploadBackend(backend)
                    b.rows = [UploadRow(backend, args.concurrency, skipped=skip)]
                    backends.append(b)
                    continue
                workdir = Path(tmp.name) / f"{n}-{'production' if backend == PRODUCTION else 'embedded'}"
                workdir.mkdir()
                backends.append(run_backend(backend, workdir, prefix, sim, jpegs, args, servers))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # the simulator did not start
        print(f"FAILED: {exc}", file=sys.stderr)
        backends.append(UploadBackend(EMBEDDED, rows=[UploadRow(EMBEDDED, args.concurrency, failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-backend: run_backend's own finally has run already
            server.stop()
        sim.stop()
        sim_problems = sim.log_problems()
        if args.keep_logs and sim.log_path.exists():
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()

    if interrupted:
        return 130
    text = section(report, backends, upload_info, sim_problems, args, machine, when)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    failed = (
        (report.failed and not args.no_pipeline)
        or any(m.failed for m in report.modes)
        or any(r.failed for b in backends for r in b.rows)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
