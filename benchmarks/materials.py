"""Materials: the image pipeline (`handlers.materials.pipeline.process`) against a naive Pillow
pipeline doing the same job, and uploads end to end (`POST /api/v1/materials`).

    .venv/bin/python benchmarks/materials.py [--quick] [--images 30] [--upload-duration 15] [--no-upload]

What it measures:

- The pipeline in this process: 12-megapixel phone-style JPEGs (4000×3000, generated: gradients,
  shapes, a printed page of text and per-channel sensor noise, ~4 MB at quality 92, EXIF
  Orientation 6 with make, model, time and GPS) through `process(data, max_edge=2000,
  thumb_edge=320)` and through the naive pipeline (`Image.open` + `load()`, `exif_transpose`,
  `thumbnail((2000, 2000), LANCZOS)` saved q85, a 320 px thumbnail q80 from the full image): ms per
  image (median, p95 over `--images` distinct images after 4 warm-up ones), images/s with one
  thread, `ThreadPoolExecutor(2)` and `ProcessPoolExecutor(2)`, the speed-up (target ≥ 5× at equal
  output), the output sizes and the mean difference of the two outputs, the median ms of each step
  of both, and the peak memory of one image (`ru_maxrss` increase in a fresh child started through
  `sh`, `--memory-runs` per pipeline).
- Uploads, per backend (embedded, production): one signed-in citizen uploads ~300 KB 1600×1200
  JPEGs (multipart `file` + `kind`) with asyncio + httpx, `--concurrency` in flight for
  `--upload-duration` s after `--upload-warmup`, then `--overload` in flight: 201/s, p50 and p99, the
  503 `busy` answers counted apart (the client waits the Retry-After it got). Every upload carries
  different bytes (a unique JPEG comment segment), since the server returns an already uploaded file
  without processing it; the database must hold one material per 201.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import multiprocessing
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import harness as h

if TYPE_CHECKING:
    from PIL import Image

ROOT = h.ROOT
SECTION = "## Materials (pipeline and upload)"
UPLOAD_PATH = "/api/v1/materials"
RATE_LIMITS = "login.ip=100000/minute"
PHONE_SIZE, PHONE_QUALITY = (4000, 3000), 92
UPLOAD_SIZE, UPLOAD_QUALITY = (1600, 1200), 76
NOISE_SIGMA = 8.0
ORIENTATION = 6
MAX_EDGE, THUMB_EDGE = 2000, 320
NAIVE_QUALITY, NAIVE_THUMB_QUALITY = 85, 80
# Equal output: the same pixel sizes (so the same orientation), no metadata, and at most this mean
# absolute difference per channel (0–255) between the two pipelines' pictures and thumbnails.
MAX_MEAN_DIFF = 3.0
MODES = ("1 thread", "ThreadPoolExecutor(2)", "ProcessPoolExecutor(2)")


def extra(p) -> None:
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--memory-runs", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help="pipeline modes, comma-separated")
    p.add_argument("--no-pipeline", action="store_true")
    p.add_argument("--no-upload", action="store_true")
    p.add_argument("--upload-images", type=int, default=8)
    p.add_argument("--upload-duration", type=float, default=15)
    p.add_argument("--upload-warmup", type=float, default=3)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--overload", type=int, default=8, help="second row's uploads in flight (0: none)")
    p.add_argument("--memory-child", nargs=2, metavar=("PIPELINE", "PATH"), help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


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


def memory_child(pipeline: str, path: str) -> None:
    """Runs in a fresh process: the peak-RSS increase of handling one image, as JSON on stdout."""
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
        cmd = [h.python_bin(), str(Path(__file__).resolve()), "--memory-child", pipeline, str(path)]
        done = subprocess.run(
            ["sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory child ({pipeline}) exited {done.returncode}: {done.stderr.strip()[-300:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def mean_abs_diff(a: bytes, b: bytes) -> float | None:
    """Mean absolute difference per channel (0–255) of two JPEGs of the same size."""
    from PIL import Image, ImageChops, ImageStat

    x, y = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    if x.size != y.size:
        return None
    return sum(ImageStat.Stat(ImageChops.difference(x, y)).mean) / 3


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
        im = media._open(data, media.JPEG, 40_000_000)
        media.apply_draft(im, MAX_EDGE)
        im.load()
        t = lap(fast, "decode (draft)", t)
        ImageOps.exif_transpose(im, in_place=True)
        im = media._to_rgb(im, im.info.get("icc_profile"))
        im = media._resize_to(im, MAX_EDGE)
        t = lap(fast, "transpose + resize", t)
        media._encode_jpeg(im, media.JPEG_QUALITY)
        t = lap(fast, "encode", t)
        thumb = im.copy()
        thumb.thumbnail((THUMB_EDGE, THUMB_EDGE), Image.Resampling.LANCZOS)
        media._encode_jpeg(thumb, media.THUMB_QUALITY)
        t = lap(fast, "thumbnail", t)
        media.quality_warnings(im, PHONE_SIZE)
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


def multipart(boundary: str, kind: str, jpeg: bytes, filename: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode()


def output_differences(shapes: dict, diff: float | None, thumb_diff: float | None, fast: Output) -> list[str]:
    """What keeps media.process's output from being equal to the naive one's (empty: equal)."""
    from PIL import Image

    problems = []
    f, n = shapes["media.process"], shapes["naive Pillow"]
    if (f[0], f[2]) != (n[0], n[2]):
        problems.append(f"sizes {f[0]} and {f[2]} against {n[0]} and {n[2]}")
    for what, d in (("picture", diff), ("thumbnail", thumb_diff)):
        if d is None or d > MAX_MEAN_DIFF:
            problems.append(f"{what}: mean difference {d} (bound {MAX_MEAN_DIFF})")
    for what, data in (("picture", fast[0]), ("thumbnail", fast[1])):
        with Image.open(io.BytesIO(data)) as im:
            if im.getexif() or {"exif", "icc_profile", "xmp", "comment"} & set(im.info):
                problems.append(f"{what}: metadata left ({sorted(im.info)})")
    return problems


def time_mode(s: h.Session, pipeline: str, how: str, warm: list[bytes], images: list[bytes]) -> dict:
    """Images/s of `pipeline` in mode `how` (and ms per image with one thread)."""
    fn = PIPELINES[pipeline]
    h.wait_until_quiet(min(s.args.quiet_wait, max(0.0, s.left())))
    per_image: list[float] = []
    if how == "1 thread":
        for data in warm:
            fn(data)
        with h.CpuWatch({}) as watch:
            began = time.perf_counter()
            for data in images:
                t = time.perf_counter()
                fn(data)
                per_image.append((time.perf_counter() - t) * 1000)
            wall = time.perf_counter() - began
    else:
        threads = how.startswith("Thread")
        pool = (
            ThreadPoolExecutor(2) if threads else ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        )
        try:
            list(pool.map(fn, warm))
            pids = list(getattr(pool, "_processes", {}) or {})
            with h.CpuWatch({f"pool {p}": p for p in pids}) as watch:
                began = time.perf_counter()
                list(pool.map(fn, images))
                wall = time.perf_counter() - began
        finally:
            pool.shutdown(wait=True)
    per_image.sort()
    row = {"pipeline": pipeline, "mode": how, "images/s": len(images) / wall, "_others": watch.others()}
    if per_image:
        row.update({"ms/image median": statistics.median(per_image), "ms/image p95": h.percentile(per_image, 95)})
    print(
        f"  {pipeline}, {how}: {row['images/s']:.2f} images/s (others used {row['_others']:.0%} of the CPU)", flush=True
    )
    return row


def run_pipeline(s: h.Session, args) -> None:
    maker = PhotoMaker(PHONE_SIZE)
    warm = [maker.jpeg(1000 + n, PHONE_QUALITY) for n in range(4)]
    images = [maker.jpeg(n, PHONE_QUALITY) for n in range(args.images)]
    del maker
    sizes = sorted(len(d) for d in images)
    s.note(f"pipeline input: {len(images)} + {len(warm)} warm-up JPEGs {PHONE_SIZE[0]}×{PHONE_SIZE[1]} q{PHONE_QUALITY}, "
           f"{sizes[0] / 1e6:.2f}–{sizes[-1] / 1e6:.2f} MB")  # fmt: skip
    outs = {name: PIPELINES[name](images[0]) for name in PIPELINES}
    from PIL import Image

    shapes = {name: (f"{o[2]}×{o[3]}", len(o[0]) / 1e3, "×".join(map(str, Image.open(io.BytesIO(o[1])).size)),
                     len(o[1]) / 1e3) for name, o in outs.items()}  # fmt: skip
    diff = mean_abs_diff(outs["media.process"][0], outs["naive Pillow"][0])
    thumb_diff = mean_abs_diff(outs["media.process"][1], outs["naive Pillow"][1])
    s.note(f"mean absolute difference of the two outputs of the first image: {h.fmt(diff, 2)} per channel for the "
           f"{MAX_EDGE} px picture, {h.fmt(thumb_diff, 2)} for the thumbnail")  # fmt: skip
    unequal = output_differences(shapes, diff, thumb_diff, outs["media.process"])
    if unequal:
        raise RuntimeError(f"media.process does not give the naive pipeline's output: {'; '.join(unequal)}")
    modes = [m for m in args.modes.split(",") if m in MODES]
    rows = [time_mode(s, name, how, warm, images) for how in modes for name in PIPELINES]
    sample = s.tmp / "phone.jpg"
    sample.write_bytes(images[0])
    memory = {}
    for name in PIPELINES:
        runs = measure_memory(name, sample, args.memory_runs) if args.memory_runs else []
        memory[name] = statistics.median((m["after_kb"] - m["before_kb"]) / 1024 for m in runs) if runs else None
    table = []
    for name in PIPELINES:
        mine = {r["mode"]: r for r in rows if r["pipeline"] == name}
        one = mine.get("1 thread", {})
        main, main_kb, thumb, thumb_kb = shapes[name]
        table.append({"pipeline": name, "ms/image median": one.get("ms/image median"), "ms/image p95": one.get("ms/image p95"),
                      **{f"images/s, {how}": mine[how]["images/s"] for how in modes},
                      "output": main, "output kB": main_kb, "thumbnail": thumb, "thumbnail kB": thumb_kb,
                      "peak RSS increase MB": memory[name], "_others": max(r["_others"] for r in mine.values())})  # fmt: skip
    s.table("Pipeline: 12-megapixel phone photo, `media.process` vs naive Pillow:", table,
            {"ms/image median": 1, "ms/image p95": 1, **{f"images/s, {m}": 2 for m in modes}, "thumbnail kB": 1})  # fmt: skip
    speedups = []
    for how in modes:
        fast = next(r for r in rows if r["pipeline"] == "media.process" and r["mode"] == how)
        naive = next(r for r in rows if r["pipeline"] == "naive Pillow" and r["mode"] == how)
        speedups.append({"measure": f"images/s, {how}", "media.process / naive": fast["images/s"] / naive["images/s"]})
        if how == "1 thread":
            ratio = naive["ms/image median"] / fast["ms/image median"]
            speedups.insert(
                0, {"measure": "median ms per image (naive / media.process)", "media.process / naive": ratio}
            )
            s.summarise_value(
                "image pipeline, 12 MP JPEG (median ms per image)", "in process, 1 thread", ratio, "× naive"
            )
    s.table("Speed-up of media.process over naive Pillow (target ≥ 5×):", speedups, {"media.process / naive": 2})
    try:
        stages = stage_times(images[: min(10, len(images))])
        for name, steps in stages.items():
            s.note(f"where the time goes, {name} (median ms per step): "
                   + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + f" (sum {sum(steps.values()):.1f})")  # fmt: skip
    except Exception as exc:  # media's helpers renamed: the breakdown is a bonus, not a result
        s.note(f"step breakdown not measured: {type(exc).__name__}: {exc}")


async def uploads(base: str, headers: dict, jpegs: list[bytes], concurrency: int, seconds: float, kind: str) -> h.Load:
    import httpx

    boundary = "zbbench" + secrets.token_hex(12)
    headers = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(_):
            i = next(counter)
            jpeg = with_comment(jpegs[i % len(jpegs)], f"zbbench {kind} {i} {secrets.token_hex(4)}")
            response = await client.post(UPLOAD_PATH, content=multipart(boundary, kind, jpeg, f"IMG_{i:05d}.jpg"),
                                         headers=headers)  # fmt: skip
            if response.status_code == 201:
                return "201", True
            if response.status_code == 503:
                wait = float(response.headers.get("retry-after", "1") or 1)
                await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
            return f"{response.status_code} {response.json().get('code', '?') if response.content else ''}", False

        return await h.drive(one, concurrency, seconds=seconds)


def run_uploads(s: h.Session, args) -> list[dict]:
    maker = PhotoMaker(UPLOAD_SIZE, seed=7)
    jpegs = [maker.jpeg(n, UPLOAD_QUALITY) for n in range(args.upload_images)]
    del maker
    out = []
    for backend in s.backends():
        server = s.zhangban(backend, env={"RATE_LIMITS": RATE_LIMITS})
        try:
            server.prepare(demo=False)
            server.start()
            citizen = h.Citizen(server.base, s.channels)
            probe = citizen.call("POST", UPLOAD_PATH, data={"kind": "bench_probe"},
                                 files={"file": ("probe.jpg", with_comment(jpegs[0], "probe"), "image/jpeg")})  # fmt: skip
            s.note(f"{server.label}: probe upload: {probe['mime']} {probe['width']}×{probe['height']}, "
                   f"{probe['size'] / 1e3:.0f} kB stored")  # fmt: skip
            for n, concurrency in enumerate([args.concurrency] + ([args.overload] if args.overload else [])):
                kind = f"bench_c{concurrency}_{n}"
                h.wait_until_quiet(min(args.quiet_wait, max(0.0, s.left())))
                asyncio.run(
                    uploads(server.base, citizen.headers, jpegs, concurrency, args.upload_warmup, kind + "_warm")
                )
                with s.watch(server) as watch:
                    load = asyncio.run(
                        uploads(server.base, citizen.headers, jpegs, concurrency, args.upload_duration, kind)
                    )
                rate, p50, p99 = load.summary()
                sql = "SELECT count(*) FROM materials WHERE kind = $1"
                if backend == h.PRODUCTION:
                    stored = h.pg_fetch(server.env["DATABASE_URL"], sql, kind)[0][0]
                else:
                    import sqlite3

                    with sqlite3.connect(next((server.cwd / "var").glob("*.sqlite3")), timeout=10) as conn:
                        stored = conn.execute(sql.replace("$1", "?"), (kind,)).fetchone()[0]
                busy = sum(v for k, v in load.outcomes.items() if k.startswith("503"))
                created = load.outcomes.get("201", 0)
                out.append({"backend": server.label, "uploads in flight": concurrency, "201/s": rate, "p50 ms": p50,
                            "p99 ms": p99, "201": created, "503 busy": busy,
                            "other answers": h.outcomes({k: v for k, v in load.outcomes.items()
                                                         if k != "201" and not k.startswith("503")}),
                            "_others": watch.others()})  # fmt: skip
                s.note(f"uploads ×{concurrency}, {server.label}: {h.outcomes(load.outcomes)} in {load.wall_s:.1f} s; "
                       f"materials rows in the database: {stored}; CPU in shares of one core: {watch.shares()}")  # fmt: skip
                if stored != created:
                    s.failed = True
                    s.note(f"uploads ×{concurrency}, {server.label}: ERROR: {stored} rows for {created} answers 201")
        except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
            s.failed_row("uploads", server.label, exc)
        s.stop(server)
    return out


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra,
                        quick={"images": 6, "memory_runs": 1, "modes": "1 thread", "upload_duration": 3,
                               "upload_warmup": 1, "overload": 0, "upload_images": 4})  # fmt: skip
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    with h.Session(args, SECTION, "benchmarks/materials.py", needs_wrk=False) as s:
        if not args.no_pipeline:
            try:
                run_pipeline(s, args)
            except Exception as exc:  # a pipeline bug must not hide the upload rows
                s.failed_row("pipeline", "in process", exc)
        if not args.no_upload:
            s.table(
                "Upload end to end: `POST /api/v1/materials`:",
                run_uploads(s, args),
                {"201/s": 1, "p50 ms": 1, "p99 ms": 1},
            )
        return s.finish(
            [
                "Pipeline: in this process; ms/image one call at a time after 4 warm-up images; images/s through one "
                "thread and pools of 2 (fork; workers warmed up first, the output bytes come back to the parent). "
                "Peak memory: a fresh child per measurement started through `sh -c` (Linux carries the exec-ing "
                "process's peak RSS into the new program's `ru_maxrss`), median of the children.",
                "Uploads: `server.py serve`, 1 worker, every channel configured against the simulators, "
                f"`RATE_LIMITS={RATE_LIMITS}`; {args.upload_images} distinct generated {UPLOAD_SIZE[0]}×{UPLOAD_SIZE[1]} "
                f"JPEGs q{UPLOAD_QUALITY} with a unique comment segment per upload; {args.upload_warmup:g} s warm-up, "
                f"then {args.upload_duration:g} s timed; 201/s = answers 201 / wall time; latencies in the client.",
                "The client, the simulators and the pools share the cores with the server: ceilings of this machine.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
