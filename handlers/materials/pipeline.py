"""Uploaded materials: identify, check, clean and thumbnail citizens' photos and PDFs.

This module is the pure processing pipeline: bytes in, bytes out. It does no HTTP I/O, no
storage and no database work, so the upload route, the storage layer and the jobs can all
call it. Every function is synchronous and CPU-bound; run it in a worker pool, never on the
event loop. A process pool is the better choice: a hostile file that crashes or hangs a
native decoder (libjpeg, libpng, libwebp, libheif, PDFium) then takes down only a worker.
A thread pool works too: Pillow drops the GIL while it decodes, resizes and encodes, and
PDFium, which is not thread-safe, is called under a lock. Results and errors can be pickled,
so they come back through either kind of pool unchanged.

API
---
`sniff(head) -> str | None`
    The content type read from the magic bytes alone: "image/jpeg", "image/png",
    "image/webp", "image/heic" (ISO BMFF `ftyp` brands heic/heix/hevc/heim/heis/mif1/msf1;
    HEIF is reported as image/heic as well) or "application/pdf"; None for anything else.
    A file's name or its declared type never matters. Pass at least the first 64 bytes; the
    PDF header is looked for anywhere in the first 1024 bytes, as PDF readers allow.

`process(data, *, max_edge=2000, thumb_edge=320, max_pixels=40_000_000, max_pdf_pages=50)`
    -> `Processed(mime, data, thumbnail, width, height, pages, warnings)`

    Images (JPEG, PNG, WebP, HEIC) always come out as a new **JPEG**: `mime` is
    "image/jpeg" whatever was uploaded, and `width`/`height` are the output's. On the way:
    the pixel count is checked from the header before any pixel is decoded; a JPEG is
    decoded at the smallest DCT scale that still covers `max_edge` (`Image.draft`, in
    libjpeg's draft mode); the EXIF orientation is applied, so the picture is upright;
    transparency is flattened onto white; an embedded ICC profile is converted to sRGB; the
    long edge is resized down to at most `max_edge`; and it is encoded as a baseline JPEG
    (quality 85) that carries no metadata at all: no EXIF (so no GPS position, camera or
    time), no XMP, no ICC, no comments. `thumbnail` is a JPEG (quality 80) with a long edge
    of at most `thumb_edge`. `pages` is None.

    The work is done on the smallest picture that serves each output: the resize and the
    colour conversion run before the picture is turned upright, the thumbnail and the
    quality hints come from one box-reduced copy of the resized picture (the reduction
    `Image.thumbnail` would make), and each of the main picture, the thumbnail and the
    hints' grayscale copy is turned upright at its own final size.

    `warnings` lists photo-quality hints for the citizen, each `{"code", "message"}` in
    Chinese: `too_small` (the original's short edge is under 600 px), `too_dark`,
    `overexposed` and `blurry`. They never stop an upload.

    PDFs are stored unchanged (`data` is the input, `mime` "application/pdf"), `pages` is
    the page count, `width`/`height` are None and `thumbnail` is the first page rendered by
    PDFium as JPEG, or None when PDFium cannot render a file that pypdf accepted.

    A PDF with active content is refused (`pdf_active_content`, its `details.found` naming
    what was found), never stored: JavaScript (actions, `/JS`, the `/JavaScript` name tree),
    `/Launch`, form submission or import, links into other files (`/GoToR`, `/GoToE`),
    renditions and rich media, embedded files and file attachments, XFA forms, and an
    `/OpenAction` or `/AA` (additional actions) that does anything but go to a place in the
    document. Every object reachable from the trailer is looked at, so nothing hides in an
    `/AA` of a form field or a `/Next` of a harmless action.

    Refused rather than rewritten without those parts: a material is the citizen's evidence,
    and what the official reviews must be the file the citizen sent (its `sha256` included);
    a rewrite would also drop what an XFA-only form shows. Scans, photos printed to PDF and
    the exports of office software carry none of these, except an `/OpenAction` that opens
    at a page, which is let through. A file with more than `MAX_PDF_OBJECTS` objects to look
    at is refused as `pdf_too_complex`, so the check stays cheap.

`watermark(jpeg, text, *, font_path=None) -> bytes`
    The official's copy of an identity document: the picture with `text` repeated
    diagonally across all of it, semi-transparent, re-encoded as JPEG without metadata.
    The input bytes are not touched. It needs a CJK font (see `cjk_font_path`); without
    one the Chinese characters come out as boxes.

`cjk_font_path() -> str | None`
    The CJK font `watermark` uses, or None when the machine has none (ops should install
    Debian's `fonts-noto-cjk` or `fonts-wqy-zenhei`).

Errors are `core.errors.DomainError`s with a stable code and a Chinese message:
`unsupported_file_type` (unknown magic bytes), 422 `corrupt_file` (truncated or
undecodable image or PDF; a truncated JPEG is refused, never padded with grey), 422
`image_too_large_pixels` (more than `max_pixels` pixels, judged from the header), 422
`pdf_encrypted` (any encryption, even one the empty password opens: reviewers must be able
to read it), 422 `too_many_pages` (more than `max_pdf_pages`), 422 `pdf_active_content` and
422 `pdf_too_complex` (see PDFs above).
"""

from __future__ import annotations

import glob
import io
import math
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import (
    Image,
    ImageCms,
    ImageDraw,
    ImageFile,
    ImageFilter,
    ImageFont,
    ImageMath,
    ImageOps,
    ImageStat,
    JpegImagePlugin,
)
from pillow_heif import register_heif_opener

from core.errors import DomainError, Unprocessable, UnsupportedMediaType

register_heif_opener()

# -- errors -----------------------------------------------------------------------------------


class MediaError(DomainError):
    """Base of the pipeline's errors (picklable like every DomainError, so they cross a process pool)."""


class UnsupportedFileType(MediaError, UnsupportedMediaType):
    code, message = (
        "unsupported_file_type",
        "不支持该文件类型，请上传 JPG、PNG、WebP、HEIC 格式的图片或 PDF 文件",
    )


class CorruptFile(MediaError, Unprocessable):
    code, message = "corrupt_file", "文件已损坏或不完整，请重新上传"


class PdfEncrypted(MediaError, Unprocessable):
    code, message = "pdf_encrypted", "PDF 文件已加密，请上传未加密的文件"


class TooManyPages(MediaError, Unprocessable):
    code, message = "too_many_pages", "PDF 页数过多，请拆分后分别上传"


class ImageTooLarge(MediaError, Unprocessable):
    code, message = "image_too_large_pixels", "图片像素过大，请压缩后重新上传"


class PdfActiveContent(MediaError, Unprocessable):
    code, message = (
        "pdf_active_content",
        "PDF 含有脚本、自动执行的操作或附件，不能提交。请用“打印为 PDF”另存一份后重新上传",
    )


class PdfTooComplex(MediaError, Unprocessable):
    code, message = "pdf_too_complex", "PDF 结构过于复杂，请用“打印为 PDF”另存一份后重新上传"


# -- result -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    mime: str
    data: bytes
    thumbnail: bytes | None
    width: int | None
    height: int | None
    pages: int | None
    warnings: list[dict[str, str]] = field(default_factory=list)


# -- sniffing ---------------------------------------------------------------------------------

JPEG, PNG, WEBP, HEIC, PDF = "image/jpeg", "image/png", "image/webp", "image/heic", "application/pdf"

_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_HEVC_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_PDF_HEADER_WINDOW = 1024


def sniff(head: bytes) -> str | None:
    """The content type from the magic bytes only, or None if it is none we take."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if len(head) >= 12 and head[4:8] == b"ftyp":
        box_size = int.from_bytes(head[:4], "big")
        end = min(len(head), box_size if box_size >= 16 else 16 + 4 * 16)
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
        # AVIF files carry "mif1" too; they are HEIC only if an HEVC brand is also present.
        if head[8:12] in _AVIF_BRANDS or (brands & _AVIF_BRANDS and not brands & _HEVC_BRANDS):
            return None
        if brands & _HEIC_BRANDS:
            return HEIC
        return None
    if b"%PDF-" in head[:_PDF_HEADER_WINDOW]:
        return PDF
    return None


# -- the pipeline -----------------------------------------------------------------------------

_PIL_FORMATS = {JPEG: ["JPEG"], PNG: ["PNG"], WEBP: ["WEBP"], HEIC: ["HEIF"]}

JPEG_QUALITY = 85
THUMB_QUALITY = 80
QUALITY_EDGE = 512  # long edge of the grayscale copy the quality hints are computed on

MIN_SHORT_EDGE = 600
DARK_MEAN = 50
BRIGHT_MEAN = 225
BRIGHT_LEVEL = 250
BRIGHT_SHARE = 0.40
# Edge energy (see quality_measures) below which a photo is called blurry. Calibrated on
# synthetic ID-card-like text, uploaded as JPEG at 1000, 2000 and 4000 px wide and run
# through this pipeline, Gaussian-blurred with a radius of r px per 1000 px of width:
#   r=0 (sharp) ~3900-4100, r=1 ~2400-2600, r=2 ~410-430, r=3 ~66-68, r=4 ~17, r=6 ~4;
#   a sharp single line of text on a plain 2000 px background ~770 (its global variance
#   is only 81, which is why tiles are used). Sensor-like noise raises the blurred scores
#   (r=3 with noise: 56-80). 150 sits well below every sharp case and above r>=3.
# Since the hints are read from the box-reduced copy (see _hint_gray), the same cards
# (tests' card(), quality 90) read r=0 ~4000-4500, r=1 ~2570-2960, r=2 ~360-420,
# r=3 ~55-61, r=4 ~14-16: within 5-15% of the full picture's figures, on the same side of 150.
BLUR_VARIANCE = 150.0
BLUR_TILE = 64
BLUR_TOP_SHARE = 0.10

WARNINGS = {
    "too_small": "照片分辨率过低，可能看不清，建议重新拍摄",
    "too_dark": "照片过暗，建议在光线充足处重新拍摄",
    "overexposed": "照片过亮或反光，建议调整角度重新拍摄",
    "blurry": "照片较模糊，建议重新拍摄",
}

_LAPLACIAN = ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=1, offset=128)
_SRGB = ImageCms.createProfile("sRGB")
_PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe

# Pillow hands an image's pixel blocks back to the C allocator as soon as the image is freed
# (PILLOW_BLOCKS_MAX defaults to 0), so each 12 MP upload would map about 24 MB of fresh pages
# (the decoded picture and its upright copy) and fault every one of them in: measured here at
# 6,000 page faults and about 15 ms of kernel time per image, a sixth of the pipeline. Kept
# blocks are reused instead: at most PIXEL_BLOCKS_PER_IMAGE blocks of at most 16 MB (Pillow's
# block size) per image in flight stay allocated between uploads.
PIXEL_BLOCKS_PER_IMAGE = 2


def keep_pixel_blocks(images_in_flight: int = 1) -> None:
    """Lets Pillow keep the freed pixel blocks of `images_in_flight` pictures for reuse; never
    lowers what is set already (by PILLOW_BLOCKS_MAX or an earlier call). The setting is the
    process's: every Pillow user in it shares the kept blocks."""
    wanted = PIXEL_BLOCKS_PER_IMAGE * max(1, images_in_flight)
    if Image.core.get_blocks_max() < wanted:
        Image.core.set_blocks_max(wanted)


keep_pixel_blocks()


def process(
    data: bytes,
    *,
    max_edge: int = 2000,
    thumb_edge: int = 320,
    max_pixels: int = 40_000_000,
    max_pdf_pages: int = 50,
) -> Processed:
    """Checks, cleans and thumbnails one uploaded file; see the module docstring."""
    mime = sniff(data[:_PDF_HEADER_WINDOW])
    if mime is None:
        raise UnsupportedFileType()
    if mime == PDF:
        return _process_pdf(data, thumb_edge=thumb_edge, max_pdf_pages=max_pdf_pages)
    return _process_image(data, mime, max_edge=max_edge, thumb_edge=thumb_edge, max_pixels=max_pixels)


def _process_image(data: bytes, mime: str, *, max_edge: int, thumb_edge: int, max_pixels: int) -> Processed:
    # Everything is done on the smallest picture that still serves it: the JPEG is decoded at a
    # reduced DCT scale, the picture is resized and converted while still stored on its side,
    # one box-reduced copy (at least QUALITY_EDGE px) feeds both the thumbnail and the quality
    # hints, and each picture is turned upright only at its own final size.
    im, original_size, turn = _decode(data, mime, max_edge=max_edge, max_pixels=max_pixels)
    im = _resize_to(im, max_edge)
    if im.mode != "RGB":  # a colour conversion above may have failed and left another mode
        im = im.convert("RGB")
    small, box = _reduced(im, max(QUALITY_EDGE, 2 * thumb_edge))
    upright = _turn(im, turn)
    del im
    out = _encode_jpeg(upright, JPEG_QUALITY)
    thumb = _turn(_thumbnail(small, box, upright.size, thumb_edge, turned=_swaps(turn)), turn)
    return Processed(
        mime=JPEG,
        data=out,
        thumbnail=_encode_jpeg(thumb, THUMB_QUALITY),
        width=upright.width,
        height=upright.height,
        pages=None,
        warnings=quality_warnings(_turn(_hint_gray(small), turn), original_size),
    )


def _hint_gray(small: Image.Image) -> Image.Image:
    """The grayscale copy of at most QUALITY_EDGE px the quality hints are computed on, made
    from the box-reduced copy. HAMMING here: box reduction then HAMMING gives edge energies
    within a few per cent of a direct BILINEAR from the full picture (what `quality_measures`
    does with a large picture, and what BLUR_VARIANCE was calibrated on); BILINEAR after the
    box reduction would read about 8% lower."""
    gray = small.convert("L")
    gray.thumbnail((QUALITY_EDGE, QUALITY_EDGE), Image.Resampling.HAMMING, reducing_gap=None)
    return gray


# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPPING = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
}


def orientation_transpose(im: Image.Image) -> Image.Transpose | None:
    """The transpose that turns `im` upright, read from its EXIF (or XMP) orientation the way
    `ImageOps.exif_transpose` reads it; None when it is upright or the metadata is broken."""
    try:
        return _ORIENTATIONS.get(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - broken EXIF: keep the picture as stored
        return None


def _swaps(turn: Image.Transpose | None) -> bool:
    return turn in _SWAPPING


def _turn(im: Image.Image, turn: Image.Transpose | None) -> Image.Image:
    return im if turn is None else im.transpose(turn)


def _reduced(im: Image.Image, min_edge: int) -> tuple[Image.Image, tuple[float, float, float, float] | None]:
    """A box-reduced copy by the largest whole factor that keeps the long edge at `min_edge` or
    more (`im` itself when no factor does), the cheap first step of every smaller picture, and
    the whole of `im` in the copy's coordinates (None when not reduced). The last row and column
    of the copy average fewer pixels when the size is not a multiple of the factor: resizing
    from that box, as `Image.resize(reducing_gap=...)` does, keeps the result aligned with `im`.
    With `min_edge` = 2 x the thumbnail edge this is the reduction `Image.thumbnail` makes."""
    factor = max(im.size) // min_edge
    if factor < 2:
        return im, None
    return im.reduce(factor), (0.0, 0.0, im.width / factor, im.height / factor)


def thumbnail_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """The size `Image.thumbnail((edge, edge))` gives a picture of `size` (never enlarged)."""
    width, height = size
    if width <= edge and height <= edge:
        return size
    aspect = width / height

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    x, y = edge, edge
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _thumbnail(
    small: Image.Image,
    box: tuple[float, float, float, float] | None,
    upright_size: tuple[int, int],
    edge: int,
    *,
    turned: bool,
) -> Image.Image:
    """The thumbnail (LANCZOS) from `small` and its box (see `_reduced`), still in the stored
    orientation; its size is the one the upright picture of `upright_size` would get from
    `Image.thumbnail`."""
    width, height = thumbnail_size(upright_size, edge)
    size = (height, width) if turned else (width, height)
    if size == small.size and box is None:
        return small.copy()
    return small.resize(size, Image.Resampling.LANCZOS, box=box)


def _open(data: bytes, mime: str, max_pixels: int) -> Image.Image:
    """Opens the image (header only) and refuses it if it has too many pixels."""
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[mime])
    except Image.DecompressionBombError as exc:  # Pillow's own guard, > 2 * MAX_IMAGE_PIXELS
        raise ImageTooLarge(details={"max_pixels": max_pixels}) from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse a hostile header
        raise CorruptFile() from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        raise CorruptFile()
    if width * height > max_pixels:
        im.close()
        raise ImageTooLarge(details={"width": width, "height": height, "max_pixels": max_pixels})
    return im


def draft_scale(size: tuple[int, int], max_edge: int) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) whose output still has a long edge of at
    least `max_edge`. `size` is the stored size: a rotation in EXIF does not change the long
    edge, and the decoder works on the stored orientation."""
    long_edge = max(size)
    for scale in (8, 4, 2):
        if -(-long_edge // scale) >= max_edge:  # libjpeg rounds the scaled size up
            return scale
    return 1


def apply_draft(im: Image.Image, max_edge: int):
    """Configures a JPEG's decoder for `draft_scale`; returns what `Image.draft` returned
    (None for other formats or when no reduction applies).

    A reduced decode also runs in libjpeg's draft mode (Pillow's decoder flag: no "fancy"
    chroma upsampling, the fastest IDCT): chroma is then decoded at the resolution it was
    stored at and repeated, rather than interpolated. The output is encoded with 2x2 chroma
    subsampling anyway, which averages that detail away again, so the pictures stay
    visually the same (mean difference 0.7/255 per channel on a 12 MP photo) and the decode
    of a 12 MP photo at 1/2 takes about 10% less time."""
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return None
    scale = draft_scale(im.size, max_edge)
    if scale == 1:
        return None
    width, height = im.size
    # Ask for exactly size // scale: Pillow picks the largest scale that fits both edges,
    # which for this request is `scale` itself.
    result = im.draft("RGB", (width // scale, height // scale))
    if result is not None and im.decoderconfig:
        # Pillow's JPEG decoder takes (scale, draft); Image.draft() leaves draft at 0.
        im.decoderconfig = (im.decoderconfig[0], 1)
    return result


def _decode(
    data: bytes, mime: str, *, max_edge: int, max_pixels: int
) -> tuple[Image.Image, tuple[int, int], Image.Transpose | None]:
    """A fully decoded RGB image in its stored orientation, the original's (stored) size and
    the transpose that turns it upright (None when it is upright already)."""
    # Refuse truncated files instead of padding them with grey. This module owns the
    # setting: nothing in the project sets it to True.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    im = _open(data, mime, max_pixels)
    original_size = im.size
    try:
        apply_draft(im, max_edge)
        im.load()  # the full decode: a truncated or broken stream raises here
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(details={"max_pixels": max_pixels}) from exc
    except Exception as exc:  # noqa: BLE001
        raise CorruptFile() from exc
    icc = im.info.get("icc_profile")
    turn = orientation_transpose(im)
    try:
        im = _to_rgb(im, icc)
    except Exception as exc:  # noqa: BLE001 - an exotic mode Pillow cannot convert
        raise CorruptFile() from exc
    return im, original_size, turn


def _to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB in sRGB: alpha flattened onto white, 16-bit scaled to 8-bit, ICC applied."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = im.convert("I") if im.mode.startswith("I;16") else im
        im = im.point(lambda v: v / 257).convert("L") if im.mode == "I" else im.convert("L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        im = flat
    elif icc and im.mode in ("RGB", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain conversion
            pass
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _resize_to(im: Image.Image, max_edge: int) -> Image.Image:
    width, height = im.size
    long_edge = max(width, height)
    if long_edge <= max_edge:
        return im
    ratio = max_edge / long_edge
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    # reducing_gap: a fast box reduce() first, LANCZOS for the last factor of at most 3.
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Baseline JPEG with no metadata at all.

    Baseline, not progressive. Measured on a noisy 2000x1500 photo-like image, quality 85,
    Pillow 13 / libjpeg-turbo 3.2: baseline 401 kB, encode 6.4 ms, decode 6.7 ms;
    progressive 363 kB (-9.5%), encode 33 ms (5x), decode 17.7 ms (2.6x). The size saved
    is small next to the CPU spent on every upload and every view on citizens' phones, and
    the mini-program shows the thumbnail first anyway. optimize=False: it saved 6.5% for
    extra encode time. Pillow writes EXIF, XMP,
    ICC and comments only when they are passed to save(); none is, and `info` is emptied so
    nothing can be picked up implicitly.
    """
    im.info = {}
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


# -- quality hints ----------------------------------------------------------------------------


def quality_measures(im: Image.Image) -> dict[str, float]:
    """Mean luminance, share of near-white pixels and edge energy of a small grayscale copy;
    cheap enough for every upload (a few milliseconds).

    Edge energy is the variance of a 3x3 Laplacian, taken per 64 px tile of the 512 px copy;
    `edge_variance` is the mean of the top 10% of tiles. Averaging over the whole frame
    would call a sharp photo of a card lying on a plain table "blurry" just because most of
    the frame is plain; the busiest tiles tell whether the text itself is sharp.
    """
    gray = im if im.mode == "L" else im.convert("L")
    if max(gray.size) > QUALITY_EDGE:
        gray = gray.copy()  # thumbnail() works in place: never on the caller's picture
        gray.thumbnail((QUALITY_EDGE, QUALITY_EDGE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    hist = gray.histogram()
    total = gray.width * gray.height
    mean = ImageStat.Stat(gray).mean[0]
    bright = sum(hist[BRIGHT_LEVEL:]) / total
    edges = gray.filter(_LAPLACIAN)
    if edges.width > 2 and edges.height > 2:
        edges = edges.crop((1, 1, edges.width - 1, edges.height - 1))  # the filter copies borders
    variances = tile_variances(edges, BLUR_TILE)
    variances.sort(reverse=True)
    top = max(1, round(len(variances) * BLUR_TOP_SHARE))
    return {
        "mean": mean,
        "bright_share": bright,
        "edge_variance": sum(variances[:top]) / top,
        "edge_variance_global": ImageStat.Stat(edges).var[0],
    }


def tile_variances(im: Image.Image, tile: int) -> list[float]:
    """The variance of each `tile` px square of an "L" image, row by row, leaving out the
    partial tiles at the right and bottom edges that hold less than a quarter of a tile
    (the first tile always counts). Computed with two box reductions of the image in float
    (the mean of d and of d*d per tile, d = value - 128, so the subtraction in
    var = E[d*d] - E[d]**2 stays exact enough), not one crop and histogram per tile."""
    centred = im.convert("F").point(lambda v: v - 128)
    squared = ImageMath.lambda_eval(lambda a: a["d"] * a["d"], d=centred)
    means = list(centred.reduce(tile).getdata())
    squares = list(squared.reduce(tile).getdata())
    columns = -(-im.width // tile)
    out = []
    for index, (m1, m2) in enumerate(zip(means, squares, strict=True)):
        y, x = divmod(index, columns)
        w = min(tile, im.width - x * tile)
        h = min(tile, im.height - y * tile)
        if w * h >= tile * tile // 4 or index == 0:
            out.append(max(0.0, m2 - m1 * m1))
    return out


def quality_warnings(im: Image.Image, original_size: tuple[int, int]) -> list[dict[str, str]]:
    """The hints for the citizen; `im` is the output picture, `original_size` the upload's."""
    codes: list[str] = []
    if min(original_size) < MIN_SHORT_EDGE:
        codes.append("too_small")
    m = quality_measures(im)
    if m["mean"] < DARK_MEAN:
        codes.append("too_dark")
    if m["mean"] > BRIGHT_MEAN or m["bright_share"] > BRIGHT_SHARE:
        codes.append("overexposed")
    # Edge energy means nothing on a picture that is mostly black or blown out; the
    # exposure hint already asks for a new photo, so "blurry" is not added on top.
    if not ({"too_dark", "overexposed"} & set(codes)) and m["edge_variance"] < BLUR_VARIANCE:
        codes.append("blurry")
    return [{"code": code, "message": WARNINGS[code]} for code in codes]


# -- PDF --------------------------------------------------------------------------------------


def _process_pdf(data: bytes, *, thumb_edge: int, max_pdf_pages: int) -> Processed:
    from pypdf import PdfReader  # imported on first use: about 20 MB of memory that photo-only workers skip

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on broken files
        raise CorruptFile() from exc
    if encrypted:
        raise PdfEncrypted()
    try:
        pages = len(reader.pages)
    except Exception as exc:  # noqa: BLE001
        raise CorruptFile() from exc
    if pages < 1:
        raise CorruptFile()
    if pages > max_pdf_pages:
        raise TooManyPages(
            f"PDF 页数过多（共 {pages} 页，最多 {max_pdf_pages} 页），请拆分后分别上传",
            details={"pages": pages, "max_pages": max_pdf_pages},
        )
    found = pdf_active_content(reader)
    if found:
        raise PdfActiveContent(details={"found": found})
    return Processed(
        mime=PDF,
        data=data,
        thumbnail=pdf_thumbnail(data, thumb_edge),
        width=None,
        height=None,
        pages=pages,
        warnings=[],
    )


MAX_PDF_OBJECTS = 200_000  # a 50-page scan has hundreds; a text-heavy report a few thousand

# Actions that run code, reach outside the document, or send or load data.
_ACTIVE_ACTIONS = {
    "/JavaScript": "JavaScript",
    "/Launch": "Launch",
    "/SubmitForm": "SubmitForm",
    "/ImportData": "ImportData",
    "/GoToR": "GoToR",
    "/GoToE": "GoToE",
    "/Rendition": "Rendition",
    "/RichMediaExecute": "RichMedia",
}
# Keys that are active content wherever they appear (the /JavaScript name tree, an action's
# script, XFA forms, embedded files and their name tree, rich media).
_ACTIVE_KEYS = {
    "/JS": "JavaScript",
    "/JavaScript": "JavaScript",
    "/XFA": "XFA",
    "/EmbeddedFiles": "EmbeddedFile",
    "/EF": "EmbeddedFile",
    "/RichMediaContent": "RichMedia",
}
_ACTIVE_SUBTYPES = {"/FileAttachment": "EmbeddedFile", "/RichMedia": "RichMedia", "/Screen": "Rendition"}
# Actions a reader runs by itself (on opening, on showing a page, on focusing a field, ...).
_TRIGGERS = {"/OpenAction": "OpenAction", "/AA": "AA"}


def pdf_active_content(reader) -> list[str]:
    """What active content a PDF holds (sorted names, empty when none), over every object
    reachable from its trailer. Raises PdfTooComplex past MAX_PDF_OBJECTS, CorruptFile when an
    object cannot be read."""
    # Imported on first use, as in _process_pdf: photo-only workers never load pypdf.
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

    found: set[str] = set()
    seen: set[tuple[int, int]] = set()
    stack: list = [reader.trailer]
    visited = 0
    try:
        while stack:
            obj = stack.pop()
            if isinstance(obj, IndirectObject):
                ref = (obj.idnum, obj.generation)
                if ref in seen:
                    continue
                seen.add(ref)
                obj = obj.get_object()
            visited += 1
            if visited > MAX_PDF_OBJECTS:
                raise PdfTooComplex(details={"max_objects": MAX_PDF_OBJECTS})
            if isinstance(obj, DictionaryObject):
                for key, value in obj.items():
                    if key in _ACTIVE_KEYS:
                        found.add(_ACTIVE_KEYS[key])
                    elif key == "/S" and (name := _resolved(value)) in _ACTIVE_ACTIONS:
                        found.add(_ACTIVE_ACTIONS[name])
                    elif key == "/Subtype" and (name := _resolved(value)) in _ACTIVE_SUBTYPES:
                        found.add(_ACTIVE_SUBTYPES[name])
                    elif key in _TRIGGERS and not _only_goto(value, trigger=key):
                        found.add(_TRIGGERS[key])
                    stack.append(value)
            elif isinstance(obj, ArrayObject):
                stack.extend(obj)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - an object a reader might see and pypdf cannot
        raise CorruptFile() from exc
    return sorted(found)


def _resolved(value):
    return value.get_object() if hasattr(value, "get_object") else value


def _only_goto(value, *, trigger: str) -> bool:
    """True when a trigger only moves within the document: an /OpenAction destination, or
    /GoTo actions (with their /Next chains) for /OpenAction and each event of an /AA."""
    from pypdf.generic import ArrayObject, DictionaryObject  # on first use, as in _process_pdf

    value = _resolved(value)
    if trigger == "/OpenAction" and isinstance(value, ArrayObject):
        return True  # an explicit destination: open at a page
    if not isinstance(value, DictionaryObject):
        return False
    actions = list(value.values()) if trigger == "/AA" else [value]
    seen: set[int] = set()
    while actions:
        action = _resolved(actions.pop())
        if id(action) in seen:
            continue
        seen.add(id(action))
        if not isinstance(action, DictionaryObject) or _resolved(action.get("/S")) != "/GoTo":
            return False
        following = _resolved(action.get("/Next"))
        if isinstance(following, ArrayObject):
            actions.extend(following)
        elif isinstance(following, DictionaryObject):
            actions.append(following)
    return True


def pdf_thumbnail(data: bytes, thumb_edge: int) -> bytes | None:
    """The first page as a JPEG with a long edge of about `thumb_edge`, or None."""
    import pypdfium2 as pdfium  # imported on first use, like pypdf: only PDFs need PDFium

    try:
        with _PDFIUM_LOCK:
            pdf = pdfium.PdfDocument(data)
            try:
                page = pdf[0]
                try:
                    width, height = page.get_size()
                    scale = thumb_edge / max(width, height, 1.0)
                    bitmap = page.render(scale=scale)
                    image = bitmap.to_pil()
                    bitmap.close()
                finally:
                    page.close()
            finally:
                pdf.close()
        image = image.convert("RGB")
        image.thumbnail((thumb_edge, thumb_edge), Image.Resampling.LANCZOS)
        return _encode_jpeg(image, THUMB_QUALITY)
    except Exception:  # noqa: BLE001 - PDFium refusing a file pypdf accepted is not an error
        return None


# -- watermark --------------------------------------------------------------------------------

_CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
_CJK_FONT_GLOBS = ("*CJK*", "*wqy*", "*WenQuanYi*", "*SourceHan*", "*DroidSansFallback*", "*uming*", "*ukai*")

WATERMARK_COLOR = (200, 30, 30)
WATERMARK_OPACITY = 0.35
WATERMARK_ANGLE = 30


@lru_cache(maxsize=1)
def cjk_font_path() -> str | None:
    """The first CJK font found on this machine, or None."""
    for path in _CJK_FONT_CANDIDATES:
        if os.path.isfile(path):
            return path
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")):
        for pattern in _CJK_FONT_GLOBS:
            found = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
            found = [p for p in found if p.lower().endswith((".ttc", ".ttf", ".otf", ".otc"))]
            if found:
                return found[0]
    return None


@lru_cache(maxsize=32)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path:
        try:
            first = ImageFont.truetype(path, size)
        except OSError:
            first = None
        if first is not None and path.lower().endswith((".ttc", ".otc")):
            # In a collection prefer the Simplified Chinese face (Noto CJK's first is Japanese).
            for index in range(1, 10):
                try:
                    font = ImageFont.truetype(path, size, index=index)
                except OSError:
                    break
                if " SC" in (font.getname()[0] or ""):
                    return font
        if first is not None:
            return first
    return ImageFont.load_default(size=size)


def watermark(jpeg: bytes, text: str, *, font_path: str | None = None, max_pixels: int = 40_000_000) -> bytes:
    """A copy of the picture with `text` repeated diagonally across it, semi-transparent."""
    if not text.strip():
        raise ValueError("watermark text is empty")
    mime = sniff(jpeg[:_PDF_HEADER_WINDOW])
    if mime is None or mime == PDF:
        raise UnsupportedFileType()
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    im = _open(jpeg, mime, max_pixels)
    try:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        base = _to_rgb(im, None)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(details={"max_pixels": max_pixels}) from exc
    except Exception as exc:  # noqa: BLE001
        raise CorruptFile() from exc

    width, height = base.size
    size = max(12, min(160, round(math.hypot(width, height) / 36)))
    font = _font(font_path or cjk_font_path(), size)
    left, top, right, bottom = font.getbbox(text)
    text_w, text_h = max(1, right - left), max(1, bottom - top)

    # Draw rows of text on a square mask covering the picture at any angle, turn it, cut
    # out the middle, and blend the colour in through it.
    side = math.ceil(math.hypot(width, height)) + 2  # its turned inscribed circle covers the picture
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    step_x, step_y = text_w + max(size * 2, text_w // 2), text_h * 3
    for row, y in enumerate(range(-text_h, side, step_y)):
        shift = (step_x // 2) * (row % 2)
        for x in range(-step_x + shift, side, step_x):
            draw.text((x - left, y - top), text, font=font, fill=255)
    mask = mask.rotate(WATERMARK_ANGLE, resample=Image.Resampling.BICUBIC)
    x0, y0 = (side - width) // 2, (side - height) // 2
    mask = mask.crop((x0, y0, x0 + width, y0 + height))
    mask = mask.point(lambda v: round(v * WATERMARK_OPACITY))
    marked = Image.composite(Image.new("RGB", base.size, WATERMARK_COLOR), base, mask)
    return _encode_jpeg(marked, JPEG_QUALITY)
