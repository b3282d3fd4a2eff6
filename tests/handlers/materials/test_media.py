"""The media pipeline (handlers/materials/pipeline.py) on files made here with Pillow, pillow-heif and pypdf.

Pure functions, no servers: these tests need none of the fixtures in conftest.py.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import pickle
import random
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageDraw, ImageFilter, ImageFont
from pypdf import PdfWriter

from core.errors import DomainError
from core.http import status_of
from handlers.materials import pipeline
from handlers.materials.pipeline import (
    CorruptFile,
    ImageTooLarge,
    MediaError,
    PdfEncrypted,
    Processed,
    TooManyPages,
    UnsupportedFileType,
    process,
    sniff,
    watermark,
)

RED = (255, 0, 0)

# -- helpers ----------------------------------------------------------------------------------


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the image data."""
    assert data[:2] == b"\xff\xd8"
    out, i = [], 2
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def assert_no_metadata(data: bytes) -> None:
    segments = jpeg_segments(data)
    markers = {m for m, _ in segments}
    app = {m for m in markers if 0xE0 <= m <= 0xEF}
    assert app <= {0xE0}, f"APPn segments left: {sorted(hex(m) for m in app)}"  # only JFIF APP0
    assert 0xFE not in markers, "a COM segment is left"
    assert not any(p.startswith(b"Exif") for _, p in segments)
    assert b"Exif\x00\x00" not in data and b"http://ns.adobe.com/xap" not in data and b"ICC_PROFILE" not in data
    with Image.open(io.BytesIO(data)) as im:
        assert not im.getexif()
        assert "icc_profile" not in im.info and "exif" not in im.info and "xmp" not in im.info
    # baseline, not progressive: SOF0 (0xC0), no SOF2 (0xC2)
    assert 0xC0 in markers and 0xC2 not in markers


def open_out(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    im.load()
    return im


def card(width: int, height: int, seed: int = 0) -> Image.Image:
    """Synthetic ID-card-like text: rows of capitals and digits on a light background.
    Uses Pillow's bundled font, so it renders the same on every machine."""
    rnd = random.Random(seed)
    im = Image.new("RGB", (width, height), (236, 232, 224))
    draw = ImageDraw.Draw(im)
    size = max(10, height // 22)
    font = ImageFont.load_default(size=size)
    y = height // 12
    while y < height - size * 2:
        words = " ".join(
            "".join(rnd.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(rnd.randint(2, 8)))
            for _ in range(6)
        )
        draw.text((width // 14, y), words, font=font, fill=(30, 30, 30))
        y += int(size * 1.8)
    return im


def pdf_bytes(pages: int, *, password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    if password is not None:
        writer.encrypt(password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (RGB, 8 bit)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def pillow_bytes_acquired() -> int:
    """Bytes of pixel memory Pillow's arena has handed out so far (new or reused blocks).

    tracemalloc cannot see pixel buffers: Pillow allocates them with the C allocator."""
    stats = Image.core.get_stats()
    return (stats["allocated_blocks"] + stats["reused_blocks"]) * Image.core.get_block_size()


# -- sniffing ---------------------------------------------------------------------------------


def test_sniff_by_magic_bytes():
    small = Image.new("RGB", (8, 8), RED)
    assert sniff(jpeg_bytes(small)) == "image/jpeg"
    assert sniff(encode(small, "PNG")) == "image/png"
    assert sniff(encode(small, "WEBP")) == "image/webp"
    assert sniff(encode(small, "HEIF")) == "image/heic"
    assert sniff(pdf_bytes(1)) == "application/pdf"
    assert sniff(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic") == "image/heic"
    assert sniff(b"\x00\x00\x00\x18ftypheix\x00\x00\x00\x00mif1heix") == "image/heic"
    assert sniff(b"\x00\x00\x00\x14ftypmsf1\x00\x00\x00\x00msf1") == "image/heic"
    # AVIF shares "mif1" but is not HEIC; MP4 video is not an image
    assert sniff(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") is None
    assert sniff(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf") is None
    assert sniff(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") is None
    assert sniff(b"GIF89a\x01\x00\x01\x00") is None
    assert sniff(b"BM" + b"\x00" * 60) is None
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff(b"") is None
    assert sniff(b"\n\r%PDF-1.7\n") == "application/pdf"  # junk before the header is allowed


@given(st.binary(max_size=64))
def test_sniff_never_raises(head):
    assert sniff(head) in {None, "image/jpeg", "image/png", "image/webp", "image/heic", "application/pdf"}


def test_names_do_not_matter(tmp_path):
    png = tmp_path / "scan.pdf"  # a PNG named .pdf
    png.write_bytes(encode(Image.new("RGB", (700, 700), (120, 130, 140)), "PNG"))
    pdf = tmp_path / "photo.jpg"  # a PDF named .jpg
    pdf.write_bytes(pdf_bytes(2))

    assert sniff(png.read_bytes()) == "image/png"
    out = process(png.read_bytes())
    assert out.mime == "image/jpeg" and out.pages is None and (out.width, out.height) == (700, 700)

    assert sniff(pdf.read_bytes()) == "application/pdf"
    out = process(pdf.read_bytes())
    assert out.mime == "application/pdf" and out.pages == 2


# -- orientation and metadata -----------------------------------------------------------------


def phone_jpeg() -> bytes:
    """An upright 1200x1600 portrait with a red marker top-left, stored the way a phone does:
    pixels turned on their side plus EXIF Orientation=6, with GPS, camera, XMP and ICC."""
    upright = Image.new("RGB", (1200, 1600), (90, 140, 200))
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, 199, 199), fill=RED)
    draw.rectangle((1000, 1400, 1199, 1599), fill=(0, 255, 0))  # green bottom-right
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what Orientation=6 undoes
    assert stored.size == (1600, 1200)

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    exif[0x010F] = "PhoneMaker"
    exif[0x0110] = "PhoneModel X"
    exif[0x0132] = "2026:05:01 10:00:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (28.0, 52.0, 12.5)
    gps[3], gps[4] = "E", (105.0, 26.0, 30.25)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://ns.adobe.com/xap/1.0/"/></x:xmpmeta>'
    data = jpeg_bytes(stored, quality=92, exif=exif, icc_profile=icc, xmp=xmp, comment=b"shot on phone")

    with Image.open(io.BytesIO(data)) as check:  # the fixture really carries it all
        assert check.getexif()[0x0112] == 6
        assert check.getexif().get_ifd(0x8825)[2] == (28.0, 52.0, 12.5)
    return data


def test_phone_jpeg_comes_out_upright_and_without_metadata():
    data = phone_jpeg()
    before = hashlib.sha256(data).hexdigest()
    out = process(data)

    assert hashlib.sha256(data).hexdigest() == before
    assert out.mime == "image/jpeg" and out.pages is None
    assert (out.width, out.height) == (1200, 1600)
    im = open_out(out.data)
    assert im.size == (1200, 1600)
    r, g, b = im.getpixel((100, 100))
    assert r > 200 and g < 60 and b < 60, "the red marker must be top-left"
    r, g, b = im.getpixel((1100, 1500))
    assert g > 200 and r < 60, "the green marker must be bottom-right"
    assert_no_metadata(out.data)

    thumb = open_out(out.thumbnail)
    assert thumb.size == (240, 320)
    r, g, b = thumb.getpixel((10, 10))
    assert r > 200 and g < 60
    assert_no_metadata(out.thumbnail)


def test_png_transparency_is_flattened_onto_white():
    im = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((300, 300, 499, 499), fill=(255, 0, 0, 255))
    out = process(encode(im, "PNG"))
    result = open_out(out.data)
    assert result.mode == "RGB"
    assert min(result.getpixel((50, 50))) > 245  # transparent -> white, not black
    r, g, b = result.getpixel((400, 400))
    assert r > 200 and g < 60


def test_palette_and_16bit_pngs():
    pal = Image.new("P", (640, 640), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.info["transparency"] = 0
    result = open_out(process(encode(pal, "PNG")).data)
    assert min(result.getpixel((5, 5))) > 245

    deep = Image.new("I;16", (640, 640), 65535 // 2)
    result = open_out(process(encode(deep, "PNG")).data)
    assert 120 <= result.getpixel((5, 5))[0] <= 135  # scaled to 8 bit, not clipped to white


def test_webp_and_heic_come_out_as_jpeg():
    src = Image.new("RGB", (900, 700), (30, 160, 90))
    ImageDraw.Draw(src).rectangle((0, 0, 99, 99), fill=RED)
    for fmt in ("WEBP", "HEIF"):
        data = encode(src, fmt, quality=90)
        assert sniff(data) == ("image/webp" if fmt == "WEBP" else "image/heic")
        out = process(data)
        assert out.mime == "image/jpeg" and (out.width, out.height) == (900, 700)
        im = open_out(out.data)
        r, g, b = im.getpixel((50, 50))
        assert r > 200 and g < 70, fmt
        r, g, b = im.getpixel((600, 400))
        assert abs(r - 30) < 20 and abs(g - 160) < 20 and abs(b - 90) < 20, fmt
        assert_no_metadata(out.data)


def test_heic_with_orientation_is_upright_once():
    upright = Image.new("RGB", (900, 1200), (90, 140, 200))
    ImageDraw.Draw(upright).rectangle((0, 0, 199, 199), fill=RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "HEIF", exif=exif.tobytes(), quality=90)
    out = process(data)
    im = open_out(out.data)
    assert im.size == (900, 1200)  # libheif turns it; EXIF must not turn it a second time
    r, g, b = im.getpixel((50, 50))
    assert r > 200 and g < 60
    assert_no_metadata(out.data)


# Each EXIF orientation and the transpose that turns an upright picture into what is stored.
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def marked_upright(width: int, height: int) -> Image.Image:
    """Card-like text with a red block top-left and a green block bottom-right."""
    upright = card(width, height, seed=7)
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, width // 6, height // 6), fill=RED)
    draw.rectangle((width - width // 6, height - height // 6, width - 1, height - 1), fill=(0, 255, 0))
    return upright


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    from PIL import ImageChops, ImageStat

    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def stored_with_orientation(orientation: int) -> bytes:
    """The marked upright 3200x2134 picture stored as a phone stores it with `orientation`."""
    upright = marked_upright(3200, 2134)
    turn = _STORED_AS[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(upright if turn is None else upright.transpose(turn), quality=92, exif=exif)


@functools.lru_cache(maxsize=1)
def upright_reference() -> Processed:
    return process(stored_with_orientation(1), max_edge=1600, thumb_edge=320)


@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_every_orientation_comes_out_upright_main_and_thumbnail(orientation):
    """The picture is turned upright only at its final sizes (main, thumbnail, hint copy),
    after the reduced decode (1/2), the resize and the box reduction (by 3, 1600 px not a
    multiple of it): each comes out as the same upright picture, whatever the orientation."""
    out = process(stored_with_orientation(orientation), max_edge=1600, thumb_edge=320)
    assert (out.width, out.height) == (1600, 1067)
    main, thumb = open_out(out.data), open_out(out.thumbnail)
    assert main.size == (1600, 1067) and thumb.size == (320, 213)
    for im in (main, thumb):
        w, h = im.size
        r, g, b = im.getpixel((w // 20, h // 20))
        assert r > 200 and g < 70 and b < 70, f"orientation {orientation}: red must be top-left"
        r, g, b = im.getpixel((w - 1 - w // 20, h - 1 - h // 20))
        assert g > 200 and r < 70 and b < 70, f"orientation {orientation}: green must be bottom-right"
    assert_no_metadata(out.data)
    assert_no_metadata(out.thumbnail)
    assert codes(out) == []

    # Same pixels as the picture stored upright, up to JPEG's block grid falling elsewhere.
    # A thumbnail resized from the reduced copy without its box (the partial last row or
    # column of the reduction stretched over the whole width) differs by more than 3.
    reference = upright_reference()
    assert mean_difference(main, open_out(reference.data)) < 1.0
    assert mean_difference(thumb, open_out(reference.thumbnail)) < 2.0


def test_thumbnail_size_is_the_one_pillow_gives():
    for size in [
        (4000, 3000),
        (3000, 4000),
        (1500, 2000),
        (2000, 1125),
        (1125, 2000),
        (1200, 760),
        (760, 1200),
        (321, 5000),
        (5000, 321),
        (333, 333),
        (320, 200),
        (641, 427),
        (427, 641),
        (1999, 1),
        (1, 1999),
    ]:
        im = Image.new("L", size)
        im.thumbnail((320, 320))
        assert pipeline.thumbnail_size(size, 320) == im.size, size
        im = Image.new("L", size)
        im.thumbnail((200, 200))
        assert pipeline.thumbnail_size(size, 200) == im.size, size


def test_broken_orientation_keeps_the_picture_as_stored():
    stored = marked_upright(900, 600)
    exif = Image.Exif()
    exif[0x0112] = 9  # no such orientation
    out = process(jpeg_bytes(stored, exif=exif))
    assert (out.width, out.height) == (900, 600)
    r, g, b = open_out(out.data).getpixel((20, 20))
    assert r > 200 and g < 70


# -- size, draft and resize -------------------------------------------------------------------


def test_draft_scale_picks_the_largest_reduction_that_covers_max_edge():
    assert pipeline.draft_scale((4000, 3000), 2000) == 2
    assert pipeline.draft_scale((3000, 4000), 2000) == 2  # portrait: same long edge
    assert pipeline.draft_scale((4032, 3024), 1000) == 4
    assert pipeline.draft_scale((4001, 3001), 2000) == 2  # 2001 px still covers 2000
    assert pipeline.draft_scale((3999, 3000), 2000) == 2  # libjpeg rounds up: 2000
    assert pipeline.draft_scale((3998, 3000), 2000) == 1  # 1999 would not cover 2000
    assert pipeline.draft_scale((16000, 12000), 2000) == 8
    assert pipeline.draft_scale((1500, 1000), 2000) == 1
    for size in [(4000, 3000), (4032, 3024), (6000, 4000), (2001, 10), (8191, 8191)]:
        for edge in (320, 1000, 2000):
            s = pipeline.draft_scale(size, edge)
            assert -(-max(size) // s) >= edge or s == 1


def test_draft_is_used_before_decoding():
    data = jpeg_bytes(card(4000, 3000), quality=90)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (4000, 3000)
        result = pipeline.apply_draft(im, 2000)
        assert result is not None, "draft() must be configured"
        mode, box = result
        assert mode == "RGB" and box == (0, 0, 2000.0, 1500.0)
        assert im.decoderconfig == (2, 1), "scale 1/2 in libjpeg's draft mode (no chroma interpolation)"
        assert im.size == (2000, 1500)  # the decoder will produce this, not 4000x3000
        im.load()
        assert im.size == (2000, 1500)
    with Image.open(io.BytesIO(encode(card(4000, 3000), "PNG"))) as im:
        assert pipeline.apply_draft(im, 2000) is None  # only JPEG has DCT scaling


def test_large_jpeg_is_decoded_reduced_and_resized(monkeypatch):
    seen = []
    real = pipeline._resize_to

    def spy(im, max_edge):
        seen.append(im.size)
        return real(im, max_edge)

    monkeypatch.setattr(pipeline, "_resize_to", spy)
    out = process(jpeg_bytes(card(4000, 3000), quality=90))
    assert seen == [(2000, 1500)], "decoded at 1/2 scale by draft(), not at full size"
    assert (out.width, out.height) == (2000, 1500)
    assert open_out(out.data).size == (2000, 1500)

    seen.clear()
    out = process(jpeg_bytes(card(4032, 3024), quality=90), max_edge=1000)
    assert seen == [(1008, 756)]  # 1/4 scale, then LANCZOS to 1000
    assert (out.width, out.height) == (1000, 750)

    # aspect ratio kept for an odd size; a portrait stored on its side comes out portrait
    seen.clear()
    exif = Image.Exif()
    exif[0x0112] = 6
    out = process(jpeg_bytes(card(4000, 2250), quality=90, exif=exif))
    assert seen == [(2000, 1125)]  # decoded and sized at 2000x1125 as stored, turned upright last
    assert (out.width, out.height) == (1125, 2000)
    assert open_out(out.data).size == (1125, 2000)
    thumb = open_out(out.thumbnail)
    assert max(thumb.size) == 320 and thumb.size == (180, 320)


def test_small_images_are_not_enlarged():
    out = process(jpeg_bytes(card(1200, 760)))
    assert (out.width, out.height) == (1200, 760)
    assert open_out(out.thumbnail).size == (320, 203)


# -- bombs ------------------------------------------------------------------------------------


def one_bit_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG: a few kB on disk, width*height bytes once decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    raw = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_without_decoding():
    bomb = one_bit_png(8000, 8000)  # 64 Mpx: above our 40 Mpx, below Pillow's own limit
    assert len(bomb) < 100_000

    gc.collect()
    pixels_before = pillow_bytes_acquired()
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge) as caught:
            process(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "image_too_large_pixels" and status_of(caught.value) == 422
    assert caught.value.details == {"width": 8000, "height": 8000, "max_pixels": 40_000_000}
    assert peak < 50_000_000
    assert pillow_bytes_acquired() - pixels_before < 50_000_000

    # control: the measure does see a decode of the same file (64 MB of pixels)
    before = pillow_bytes_acquired()
    with Image.open(io.BytesIO(bomb)) as im:
        im.load()
    assert pillow_bytes_acquired() - before >= 64_000_000


def test_forged_header_beyond_pillows_own_limit():
    # 50000x50000 trips Pillow's DecompressionBombError inside Image.open
    with pytest.raises(ImageTooLarge):
        process(forged_png(50000, 50000))
    # 7000x7000 passes Pillow but not max_pixels; refused from the header alone
    with pytest.raises(ImageTooLarge):
        process(forged_png(7000, 7000))
    with pytest.raises(ImageTooLarge):
        process(one_bit_png(2000, 2000), max_pixels=1_000_000)


# -- broken and refused files -----------------------------------------------------------------


def test_truncated_jpeg_is_corrupt_not_grey():
    data = jpeg_bytes(card(1200, 800), quality=90)
    for cut in (len(data) // 2, len(data) - 200, len(data) - 2):
        with pytest.raises(CorruptFile) as caught:
            process(data[:cut])
        assert caught.value.code == "corrupt_file" and status_of(caught.value) == 422
    progressive = jpeg_bytes(card(1200, 800), quality=90, progressive=True)
    with pytest.raises(CorruptFile):
        process(progressive[: len(progressive) * 2 // 3])
    # the setting is never left on, whoever touched it before
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(CorruptFile):
            process(data[: len(data) // 2])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_other_broken_files():
    png = encode(card(700, 700), "PNG")
    with pytest.raises(CorruptFile):
        process(png[: len(png) // 2])
    with pytest.raises(CorruptFile):
        process(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(CorruptFile):
        process(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(CorruptFile):
        process(b"%PDF-1.4\n this is not a pdf at all\n%%EOF")
    with pytest.raises(CorruptFile):
        process(pdf_bytes(3)[:200])


def test_unknown_bytes_are_unsupported():
    rnd = random.Random(0)
    for _ in range(20):
        junk = rnd.randbytes(4096)
        if sniff(junk) is None:
            with pytest.raises(UnsupportedFileType) as caught:
                process(junk)
            assert caught.value.code == "unsupported_file_type" and status_of(caught.value) == 415
    with pytest.raises(UnsupportedFileType):
        process(b"")
    with pytest.raises(UnsupportedFileType):
        process(encode(Image.new("RGB", (50, 50)), "GIF"))
    with pytest.raises(UnsupportedFileType):
        process(encode(Image.new("RGB", (50, 50)), "BMP"))


# -- PDF --------------------------------------------------------------------------------------


def test_encrypted_pdf_is_refused():
    for password in ("pw", ""):  # even one the empty password opens
        with pytest.raises(PdfEncrypted) as caught:
            process(pdf_bytes(2, password=password))
        assert caught.value.code == "pdf_encrypted" and status_of(caught.value) == 422


def test_too_many_pages():
    with pytest.raises(TooManyPages) as caught:
        process(pdf_bytes(60))
    assert caught.value.code == "too_many_pages" and status_of(caught.value) == 422
    assert caught.value.details == {"pages": 60, "max_pages": 50}
    assert "60" in caught.value.message and "50" in caught.value.message
    assert process(pdf_bytes(50)).pages == 50
    with pytest.raises(TooManyPages):
        process(pdf_bytes(3), max_pdf_pages=2)


def test_valid_pdf_is_kept_unchanged_with_page_count_and_thumbnail():
    data = pdf_bytes(3)
    out = process(data)
    assert out.mime == "application/pdf"
    assert out.data == data
    assert out.pages == 3
    assert out.width is None and out.height is None and out.warnings == []
    thumb = open_out(out.thumbnail)
    assert thumb.height == 320 and 225 <= thumb.width <= 227  # A4 at 320 px high
    assert min(thumb.getpixel((100, 100))) > 245  # a blank white page
    assert_no_metadata(out.thumbnail)


def test_pdf_thumbnail_failure_is_not_an_error(monkeypatch):
    import pypdfium2

    def refuse(*args, **kwargs):
        raise pypdfium2.PdfiumError("cannot render")

    monkeypatch.setattr(pypdfium2, "PdfDocument", refuse)
    out = process(pdf_bytes(1))
    assert out.pages == 1 and out.thumbnail is None


# -- quality hints ----------------------------------------------------------------------------


def codes(out: Processed) -> list[str]:
    return [w["code"] for w in out.warnings]


def test_quality_hints():
    tiny = process(jpeg_bytes(card(400, 300)))
    assert "too_small" in codes(tiny)
    hint = next(w for w in tiny.warnings if w["code"] == "too_small")
    assert hint["message"] == "照片分辨率过低，可能看不清，建议重新拍摄"

    dark = process(jpeg_bytes(Image.new("RGB", (1000, 800), (8, 8, 8))))
    assert codes(dark) == ["too_dark"]
    assert dark.warnings[0]["message"] == "照片过暗，建议在光线充足处重新拍摄"

    white = process(jpeg_bytes(Image.new("RGB", (1000, 800), (255, 255, 255))))
    assert codes(white) == ["overexposed"]
    assert white.warnings[0]["message"] == "照片过亮或反光，建议调整角度重新拍摄"

    glare = card(1200, 800)  # readable card with a big reflection: > 40% near-white
    ImageDraw.Draw(glare).rectangle((0, 0, 1200, 400), fill=(253, 253, 253))
    assert codes(process(jpeg_bytes(glare))) == ["overexposed"]

    assert codes(process(jpeg_bytes(card(1200, 800)))) == []


def test_blur_calibration():
    """Sharp synthetic text vs the same text Gaussian-blurred: only the blurred is 'blurry'."""
    sharp = card(1200, 760)
    blurred = sharp.filter(ImageFilter.GaussianBlur(5))
    sharp_out, blurred_out = process(jpeg_bytes(sharp, quality=90)), process(jpeg_bytes(blurred, quality=90))
    assert codes(sharp_out) == []
    assert codes(blurred_out) == ["blurry"]
    assert blurred_out.warnings[0]["message"] == "照片较模糊，建议重新拍摄"

    s = pipeline.quality_measures(open_out(sharp_out.data))["edge_variance"]
    b = pipeline.quality_measures(open_out(blurred_out.data))["edge_variance"]
    assert s > 10 * pipeline.BLUR_VARIANCE and b < pipeline.BLUR_VARIANCE / 2

    # the same at phone resolution (blur scaled with the picture)
    big = card(4000, 2520)
    assert codes(process(jpeg_bytes(big, quality=90))) == []
    assert codes(process(jpeg_bytes(big.filter(ImageFilter.GaussianBlur(16)), quality=90))) == ["blurry"]

    # a sharp single line on a plain background is not "blurry" just for being sparse
    sparse = Image.new("RGB", (2000, 1500), (180, 170, 160))
    font = ImageFont.load_default(size=60)
    ImageDraw.Draw(sparse).text((300, 400), "NAME 1234567890 ABC", font=font, fill=(20, 20, 20))
    assert codes(process(jpeg_bytes(sparse, quality=90))) == []


def test_tile_variances_are_those_of_each_tile():
    from PIL import ImageStat

    rnd = random.Random(3)
    for size in [(510, 382), (512, 384), (64, 64), (70, 10), (130, 200), (1, 1)]:
        im = Image.effect_noise(size, 60).convert("L")
        ImageDraw.Draw(im).rectangle((0, 0, size[0] // 3, size[1] // 3), fill=rnd.randrange(256))
        expected = []
        for y in range(0, size[1], 64):
            for x in range(0, size[0], 64):
                box = (x, y, min(x + 64, size[0]), min(y + 64, size[1]))
                if (box[2] - x) * (box[3] - y) >= 64 * 64 // 4 or (x == 0 and y == 0):
                    expected.append(ImageStat.Stat(im.crop(box)).var[0])
        got = pipeline.tile_variances(im, 64)
        assert len(got) == len(expected), size
        assert all(abs(a - b) <= 1e-3 * max(1.0, b) for a, b in zip(got, expected, strict=True)), size


def test_hints_from_the_reduced_copy_read_like_the_full_picture():
    """The hints are computed on the box-reduced copy the thumbnail comes from, not on the
    output picture; the edge energy they read stays within a few per cent of the full
    picture's, so BLUR_VARIANCE keeps its calibration."""
    for width in (2000, 4000):
        base = card(width, int(width * 0.63))
        for radius in (0, 1, 2, 3):
            im = base.filter(ImageFilter.GaussianBlur(radius * width / 1000)) if radius else base
            decoded, _, turn = pipeline._decode(
                jpeg_bytes(im, quality=90), "image/jpeg", max_edge=2000, max_pixels=40_000_000
            )
            decoded = pipeline._resize_to(decoded, 2000)
            full = pipeline.quality_measures(decoded)["edge_variance"]
            small, _ = pipeline._reduced(decoded, 640)
            assert max(small.size) < max(decoded.size)
            reduced = pipeline.quality_measures(pipeline._hint_gray(small))["edge_variance"]
            assert abs(reduced - full) <= 0.12 * full + 2, (width, radius, full, reduced)


def test_pillow_keeps_pixel_blocks_for_the_images_in_flight():
    before = Image.core.get_blocks_max()
    try:
        assert before >= pipeline.PIXEL_BLOCKS_PER_IMAGE  # set when the pipeline is imported
        pipeline.keep_pixel_blocks(3)
        assert Image.core.get_blocks_max() == max(before, 3 * pipeline.PIXEL_BLOCKS_PER_IMAGE)
        pipeline.keep_pixel_blocks(1)  # never lowered
        assert Image.core.get_blocks_max() == max(before, 3 * pipeline.PIXEL_BLOCKS_PER_IMAGE)
    finally:
        Image.core.set_blocks_max(before)


# -- watermark --------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [(255, 255, 255), (20, 20, 20), (120, 140, 160)])
def test_watermark_covers_the_whole_picture(background):
    src = Image.new("RGB", (1600, 1000), background)
    data = jpeg_bytes(src, quality=95)
    frozen = bytes(data)
    out = watermark(data, "仅供泸州市政务服务中心办理业务使用 2026-05-01")
    assert data == frozen
    assert out != data
    marked = open_out(out)
    assert marked.size == (1600, 1000)
    assert_no_metadata(out)

    original = open_out(data)
    diff = Image.new("L", marked.size)
    diff.putdata(
        [
            1 if max(abs(a - b) for a, b in zip(p, q, strict=False)) > 25 else 0
            for p, q in zip(marked.get_flattened_data(), original.get_flattened_data(), strict=False)
        ]
    )
    total = sum(diff.get_flattened_data())
    assert total > 0.03 * 1600 * 1000, f"only {total} pixels changed"
    # across the whole picture: every cell of a 4x4 grid is marked
    for gx in range(4):
        for gy in range(4):
            cell = diff.crop((gx * 400, gy * 250, (gx + 1) * 400, (gy + 1) * 250))
            assert sum(cell.get_flattened_data()) > 500, f"cell {gx},{gy} is not marked"
    # semi-transparent: the background still shows through everywhere
    assert max(abs(a - b) for a, b in zip(marked.getpixel((0, 0)), background, strict=False)) < 200
    strongest = max(max(abs(a - b) for a, b in zip(p, background, strict=False)) for p in marked.get_flattened_data())
    assert strongest < 200


def test_watermark_keeps_orientation_and_refuses_junk():
    exif = Image.Exif()
    exif[0x0112] = 6
    out = watermark(jpeg_bytes(Image.new("RGB", (800, 600), "white"), exif=exif), "仅供审核使用")
    assert open_out(out).size == (600, 800)
    with pytest.raises(UnsupportedFileType):
        watermark(b"not an image", "仅供审核使用")
    with pytest.raises(UnsupportedFileType):
        watermark(pdf_bytes(1), "仅供审核使用")
    with pytest.raises(CorruptFile):
        data = jpeg_bytes(card(800, 600))
        watermark(data[: len(data) // 2], "仅供审核使用")
    with pytest.raises(ValueError):
        watermark(jpeg_bytes(card(800, 600)), "  ")


def test_cjk_font_lookup():
    path = pipeline.cjk_font_path()
    if path is not None:
        font = pipeline._font(path, 40)
        assert font.getbbox("仅供")[2] > 40
    # an explicit font that does not exist falls back to Pillow's bundled font
    assert pipeline._font("/nonexistent/font.ttc", 40) is not None


# -- errors and results cross a process pool --------------------------------------------------


def test_errors_and_results_pickle():
    for exc in (
        UnsupportedFileType(),
        CorruptFile(),
        PdfEncrypted(),
        TooManyPages("PDF 页数过多", details={"pages": 60, "max_pages": 50}),
        ImageTooLarge(details={"width": 1, "height": 2, "max_pixels": 3}),
    ):
        assert isinstance(exc, DomainError) and isinstance(exc, MediaError)
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc)
        assert (copy.code, copy.message, status_of(copy), copy.details) == (
            exc.code,
            exc.message,
            status_of(exc),
            exc.details,
        )
        assert copy.body() == exc.body()
    out = process(jpeg_bytes(card(700, 700)))
    assert pickle.loads(pickle.dumps(out)) == out


# -- fuzz: hostile bytes only ever give the documented errors ---------------------------------

_SEEDS = {
    "jpeg": jpeg_bytes(card(160, 120), quality=80),
    "png": encode(card(160, 120), "PNG"),
    "webp": encode(card(160, 120), "WEBP"),
    "pdf": pdf_bytes(2),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_SEEDS)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_mutated_files_fail_cleanly(kind, cut, flips):
    data = bytearray(_SEEDS[kind][: max(1, int(len(_SEEDS[kind]) * cut))] if cut < 0.999 else _SEEDS[kind])
    for where, value in flips:
        data[min(len(data) - 1, int(len(data) * where))] = value
    try:
        out = process(bytes(data))
    except MediaError as exc:
        assert exc.code in {
            "unsupported_file_type",
            "corrupt_file",
            "image_too_large_pixels",
            "pdf_encrypted",
            "too_many_pages",
        }
    else:
        assert out.mime in {"image/jpeg", "application/pdf"}
