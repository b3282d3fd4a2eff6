"""Materials over HTTP: upload through the pipeline, sealed storage, reuse, deletion rules, access."""

from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.errors import Forbidden, NotFound
from handlers.materials.links import PLATFORM_VIEWER, file_url, verify
from handlers.materials.service import IMAGE_LIMIT, PDF_LIMIT, limit_for
from tests.conftest import make_server
from tests.helpers import (
    RENEWAL,
    auth,
    id_number,
    jpeg,
    login,
    new_draft,
    official_client,
    renewal_answers,
    to_l3,
    upload,
)


def pdf(pages=2, encrypt: str | None = None) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(595, 842)
    if encrypt:
        writer.encrypt(encrypt)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def owner(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    return login(server, wechat_sim)[0]


def test_phone_photo_is_upright_and_stripped(server, owner):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate 90° clockwise
    exif[0x010F] = "PhoneMaker"
    gps = {1: "N", 2: (28.0, 52.0, 12.0), 3: "E", 4: (105.0, 26.0, 30.0)}
    exif[0x8825] = gps
    image = Image.new("RGB", (800, 600), (200, 200, 200))
    for x in range(0, 100):
        for y in range(0, 100):
            image.putpixel((x, y), (255, 0, 0))  # red marker, top-left as stored
    for x in range(0, 800, 20):
        for y in range(0, 600, 20):
            image.putpixel((x, y), (0, 0, 0))
    raw = io.BytesIO()
    image.save(raw, "JPEG", quality=92, exif=exif)
    response = upload(server, owner, raw.getvalue())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (600, 800)  # turned upright
    stored = httpx.get(body["file_url"])
    assert stored.status_code == 200 and stored.headers["content-type"] == "image/jpeg"
    out = Image.open(io.BytesIO(stored.content))
    assert out.size == (600, 800)
    assert len(out.getexif()) == 0 and b"Exif" not in stored.content[:4096] and b"PhoneMaker" not in stored.content
    r, g, b = out.convert("RGB").getpixel((560, 30))  # the red corner is now top-right
    assert r > 180 and g < 90 and b < 90
    thumb = httpx.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 320


def test_content_decides_the_type_not_the_name(server, owner):
    png = io.BytesIO()
    Image.new("RGB", (900, 700), (10, 200, 10)).save(png, "PNG")
    as_pdf = upload(server, owner, png.getvalue(), name="scan.pdf", mime="application/pdf", kind="scan")
    assert as_pdf.status_code == 201 and as_pdf.json()["mime"] == "image/jpeg"
    as_jpg = upload(server, owner, pdf(3), name="photo.jpg", mime="image/jpeg", kind="scan")
    assert as_jpg.status_code == 201 and as_jpg.json()["mime"] == "application/pdf" and as_jpg.json()["pages"] == 3


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"MZ\x90\x00 this is an executable" * 10, 415, "unsupported_file_type"),
        (jpeg()[:3000], 422, "corrupt_file"),
        (pdf(1, encrypt="secret"), 422, "pdf_encrypted"),
    ],
    ids=["exe", "truncated-jpeg", "encrypted-pdf"],
)
def test_bad_files_are_refused_clearly(server, owner, data, status, code):
    response = upload(server, owner, data)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_decompression_bomb_is_refused(server, owner):
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # ~50 KB on the wire, 400 megapixels decoded
    response = upload(server, owner, bomb.getvalue())
    assert response.status_code == 422 and response.json()["code"] == "image_too_large_pixels"


def test_heic_is_accepted(server, owner):
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = io.BytesIO()
    Image.new("RGB", (1200, 900), (120, 60, 30)).save(heic, "HEIF", quality=80)
    response = upload(server, owner, heic.getvalue(), name="IMG_0001.HEIC", mime="image/heic")
    assert response.status_code == 201, response.text
    assert response.json()["mime"] == "image/jpeg"


def test_same_file_twice_is_stored_once_and_sealed(server, owner):
    data = jpeg(1400, 1000, (90, 90, 40))
    first = upload(server, owner, data)
    again = upload(server, owner, data, name="copy.jpg")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    media_root = Path(server.cwd) / "var" / "media"
    objects = [p for p in media_root.rglob("*") if p.is_file()]
    stored = httpx.get(first.json()["file_url"]).content
    # On disk every object is sealed: neither the upload nor the processed file appears in clear.
    for path in objects:
        blob = path.read_bytes()
        assert data[:2000] not in blob and stored[100:2000] not in blob
        assert not blob.startswith(b"\xff\xd8")
    rows = server.database.query(f"SELECT count(*) FROM materials WHERE id = '{first.json()['id']}'")
    assert rows == [(1,)]


def test_another_users_material_is_404(server, owner, wechat_sim):
    mine = upload(server, owner, jpeg(1200, 900, (10, 10, 150))).json()
    other, _ = login(server, wechat_sim)
    with server.client(headers=auth(other)) as c:
        assert c.get(f"/api/v1/materials/{mine['id']}").status_code == 404
        assert c.delete(f"/api/v1/materials/{mine['id']}").status_code == 404
        assert c.get("/api/v1/materials").json() == {"kinds": []}
    tampered = mine["file_url"].replace(f"v={owner['user']['id']}", f"v={other['user']['id']}")
    assert httpx.get(tampered).status_code in (403, 404)
    assert httpx.get(mine["file_url"].rsplit("&s=", 1)[0] + "&s=AAAA").status_code == 403


def test_reuse_in_a_draft_and_no_deleting_what_a_case_used(server, wechat_sim):
    tokens = to_l3(server, wechat_sim, "韩十八", id_number())
    photo = upload(server, tokens, jpeg(1500, 2000, (200, 180, 160)), kind="id_photo")
    assert photo.status_code == 201
    material_id = photo.json()["id"]
    with server.client(headers=auth(tokens)) as c:
        library = c.get("/api/v1/materials").json()["kinds"]
        assert [k["kind"] for k in library] == ["id_photo"] and library[0]["items"][0]["id"] == material_id
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers()
        answers.pop("materials")
        answers["applicant"]["phone"] = "13711113333"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        problems = c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]
        assert [(p["path"], p["code"]) for p in problems] == [("materials.photo", "material_missing")]
        attached = c.put(f"/api/v1/drafts/{draft['id']}/materials/photo", json={"material_id": material_id})
        assert attached.status_code == 200 and attached.json()["materials"] == {"photo": [material_id]}
        pdf_id = upload(server, tokens, pdf(1), kind="scan").json()["id"]
        refused = c.put(f"/api/v1/drafts/{draft['id']}/materials/photo", json={"material_id": pdf_id})
        assert refused.status_code == 422 and refused.json()["code"] == "material_kind_not_allowed"
        assert c.post(f"/api/v1/drafts/{draft['id']}/review").json() == {"ok": True, "problems": []}
        submitted = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
        assert submitted.status_code == 201, submitted.text
        kept = c.delete(f"/api/v1/materials/{material_id}")
        assert kept.status_code == 409 and kept.json()["code"] == "material_in_use"
        assert c.delete(f"/api/v1/materials/{pdf_id}").status_code == 204
        assert c.get(f"/api/v1/materials/{pdf_id}").status_code == 404
        original = httpx.get(c.get(f"/api/v1/materials/{material_id}").json()["file_url"]).content
    case_no = submitted.json()["case_no"]

    # The handling department's official sees a watermarked copy; the stored original stays clean.

    path = f"/console/api/cases/{case_no}/materials/{material_id}"
    handler, outsider = official_client(server, "泸州市公安局"), official_client(server, "泸州市医疗保障局")
    try:
        assert handler.get(path).status_code == 422  # a reason is required
        copy = handler.get(path, params={"reason": f"审核办件 {case_no}"})
        assert copy.status_code == 200 and copy.headers["cache-control"] == "no-store"
        outside = outsider.get(path, params={"reason": "随便看看"})
        assert outside.status_code == 404 and outside.json()["code"] == "case_not_found"  # scoped: not told it exists
    finally:
        handler.close()
        outsider.close()
    marked = Image.open(io.BytesIO(copy.content)).convert("RGB")
    clean = Image.open(io.BytesIO(original)).convert("RGB")
    assert marked.size == clean.size
    diff = sum(
        1
        for a, b in zip(marked.getdata(), clean.getdata(), strict=False)
        if sum(abs(x - y) for x, y in zip(a, b, strict=False)) > 60
    )
    assert diff > marked.size[0] * marked.size[1] * 0.02  # visibly marked across the image
    with server.client(headers=auth(tokens)) as c:
        assert httpx.get(c.get(f"/api/v1/materials/{material_id}").json()["file_url"]).content == original
    audited = server.database.query(
        f"SELECT detail FROM audit_log WHERE action = 'material.read' AND target_id = '{material_id}'"
    )
    assert len(audited) == 1


def test_a_fake_material_id_in_a_draft_is_a_review_problem(server, wechat_sim):
    tokens = to_l3(server, wechat_sim, "杨十九", id_number())
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers()
        answers["applicant"]["phone"] = "13711114444"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})  # materials.photo = fake id
        problems = c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]
    assert [(p["path"], p["code"]) for p in problems] == [("materials.photo", "material_not_found")]


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory, databases, wechat_sim):
    """A server that processes one upload at a time and queues none, so concurrent uploads
    saturate it whatever the machine's load."""
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "oneupload", UPLOAD_WORKERS="1", UPLOAD_QUEUE="0")
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def test_saturation_answers_503_and_loses_nothing(one_at_a_time, wechat_sim):
    server = one_at_a_time
    owner = login(server, wechat_sim)[0]
    big = [jpeg(4000, 3000, (i * 20 % 255, 90, 120), quality=95) for i in range(14)]
    with ThreadPoolExecutor(14) as pool:
        responses = list(pool.map(lambda d: upload(server, owner, d, kind="big"), big))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 503}, [r.text for r in responses if r.status_code not in (201, 503)]
    assert 503 in statuses and 201 in statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["code"] == "busy" and int(r.headers["retry-after"]) > 0
    ok_ids = [r.json()["id"] for r in responses if r.status_code == 201]
    rows = server.database.query("SELECT id FROM materials WHERE kind = 'big'")
    assert sorted(r[0] for r in rows) == sorted(ok_ids)  # no half-written rows for the refused ones
    for r in responses:
        if r.status_code == 201:
            assert Image.open(io.BytesIO(httpx.get(r.json()["file_url"]).content)).size == (2000, 1500)
    retried = [upload(server, owner, big[i], kind="big") for i, s in enumerate(statuses) if s == 503]
    assert all(r.status_code == 201 for r in retried)  # a retry after Retry-After succeeds


def test_materials_in_an_s3_compatible_store(tmp_path_factory, databases, wechat_sim):
    """The same uploads, with files in a bucket (moto's S3 server) instead of MEDIA_ROOT."""
    import secrets

    import boto3
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port, make_server

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    bucket, key_id, secret = (
        f"zbt-{secrets.token_hex(4)}",
        "AKIA" + secrets.token_hex(8).upper(),
        secrets.token_urlsafe(30),
    )
    try:
        srv, _ = make_server(
            tmp_path_factory,
            databases,
            wechat_sim,
            "s3store",
            S3_BUCKET=bucket,
            S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            S3_REGION="us-east-1",
            S3_ACCESS_KEY_ID=key_id,
            S3_SECRET_ACCESS_KEY=secret,
        )
        try:
            tokens, _ = login(srv, wechat_sim)
            data = jpeg(1300, 900, (60, 160, 90))
            created = upload(srv, tokens, data)
            assert created.status_code == 201, created.text
            stored = httpx.get(created.json()["file_url"])
            assert stored.status_code == 200 and Image.open(io.BytesIO(stored.content)).size == (1300, 900)
        finally:
            srv.stop()
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        assert len(objects) == 2  # the file and its thumbnail
        for obj in objects:
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert not body.startswith(b"\xff\xd8") and stored.content[200:2000] not in body  # sealed
        local = srv.cwd / "var" / "media"
        assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))  # nothing went to MEDIA_ROOT
    finally:
        moto.stop()


def test_oversized_image_is_refused_while_reading(server, owner):
    too_big = jpeg(800, 600)[:2000] + b"\x00" * (10 * 1024 * 1024 + 10)  # sniffed as JPEG: the 10 MiB limit applies
    response = upload(server, owner, too_big)
    assert response.status_code == 413 and response.json()["code"] == "file_too_large"


def test_validity_dates_in_the_library(server, owner):
    expired = httpx.post(
        server.url + "/api/v1/materials",
        headers=auth(owner),
        data={"kind": "id_card", "valid_until": "2020-01-01"},
        files={"file": ("id.jpg", jpeg(1000, 700, (1, 2, 3)), "image/jpeg")},
    )
    assert expired.status_code == 201 and expired.json()["valid_until"] == "2020-01-01" and expired.json()["expired"]
    bad = httpx.post(
        server.url + "/api/v1/materials",
        headers=auth(owner),
        data={"kind": "id_card", "valid_until": "明年"},
        files={"file": ("id.jpg", jpeg(1000, 700, (3, 2, 1)), "image/jpeg")},
    )
    assert bad.status_code == 422 and "valid_until" in bad.json()["details"]["fields"]
    library = httpx.get(server.url + "/api/v1/materials", headers=auth(owner)).json()["kinds"]
    id_cards = next(k for k in library if k["kind"] == "id_card")["items"]
    assert id_cards[0]["expired"] is True


# -- without a server -------------------------------------------------------------------------

KEY = b"k" * 32


def signed(*, viewer: str = "7", expires: int, base_url: str = "https://zb.example/") -> dict:
    """The verify() arguments a fresh /files link to material m1 carries."""
    url = file_url(signing_key=KEY, base_url=base_url, material_id="m1", variant="file", viewer=viewer, expires=expires)
    path, query = url.split("?", 1)
    assert path == "https://zb.example/files/m1/file"
    args = dict(pair.split("=", 1) for pair in query.split("&"))
    return {"material_id": "m1", "variant": "file", "viewer": args["v"], "expires": args["e"], "signature": args["s"]}


def test_a_link_holds_only_for_its_file_viewer_and_time():
    soon = int(time.time()) + 60
    good = signed(expires=soon)
    verify(signing_key=KEY, **good)
    verify(signing_key=KEY, **signed(viewer=PLATFORM_VIEWER, expires=soon, base_url="https://zb.example"))
    tampered = (
        {"viewer": "8"},
        {"material_id": "m2"},
        {"variant": "thumb"},
        {"expires": str(soon + 1)},
        {"signature": ""},
    )
    for changed in tampered:
        with pytest.raises(Forbidden) as refused:
            verify(signing_key=KEY, **{**good, **changed})
        assert refused.value.code == "link_expired"
    with pytest.raises(Forbidden):
        verify(signing_key=b"other" * 8, **good)
    with pytest.raises(Forbidden):
        verify(signing_key=KEY, **signed(expires=soon - 120))
    with pytest.raises(NotFound) as invalid:
        verify(signing_key=KEY, **{**good, "expires": "soon"})
    assert invalid.value.code == "link_invalid"


def test_the_size_limit_follows_the_sniffed_type():
    assert limit_for(pdf(1)[:64]) == PDF_LIMIT
    assert limit_for(jpeg(32, 32)[:64]) == IMAGE_LIMIT
    assert limit_for(b"MZ" + b"\x00" * 62) == IMAGE_LIMIT  # unknown: the smaller limit until the pipeline refuses it
