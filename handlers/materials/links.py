"""Signed, expiring links to materials' files: the citizen's view links and the core platform's.

`/files/<id>/<variant>` serves whoever presents a genuine, unexpired link. The signature binds the
material, the variant (file or thumbnail), the viewer and the expiry, so a link cannot be
stretched to another file, another viewer or a later time; which materials a viewer may reach
is then checked by the download use case (`service.Materials.download`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from core.errors import Forbidden, NotFound
from storage.models import Material

URL_TTL_S = 300
PLATFORM_VIEWER = "platform"
PLATFORM_LINK_TTL_S = 24 * 3600


def link_signature(*, key: bytes, material_id: str, variant: str, viewer: str, expires: int) -> str:
    """The URL-safe signature of a link to a material's variant for viewer until expires."""
    mac = hmac.new(key, f"{material_id}|{variant}|{viewer}|{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def file_url(*, signing_key: bytes, base_url: str, material_id: str, variant: str, viewer: str, expires: int) -> str:
    """The signed URL of a material's file or thumbnail for viewer, valid until expires (Unix seconds)."""
    sig = link_signature(key=signing_key, material_id=material_id, variant=variant, viewer=viewer, expires=expires)
    return f"{base_url.rstrip('/')}/files/{material_id}/{variant}?v={viewer}&e={expires}&s={sig}"


def citizen_links(*, signing_key: bytes, base_url: str, material: Material, viewer: str) -> dict:
    """Short-lived links for the file and thumbnail, bound to the viewer."""
    expires = int(time.time()) + URL_TTL_S

    def url(variant: str) -> str:
        return file_url(
            signing_key=signing_key,
            base_url=base_url,
            material_id=material.id,
            variant=variant,
            viewer=viewer,
            expires=expires,
        )

    out = {"file_url": url("file"), "url_expires_at": expires}
    out["thumbnail_url"] = url("thumb") if material.thumb_object_name else None
    return out


def verify(*, signing_key: bytes, material_id: str, variant: str, viewer: str, expires: str, signature: str) -> None:
    """Returns None for a genuine, unexpired link; raises NotFound or Forbidden for any other."""
    try:
        expires_at = int(expires)
    except ValueError:
        raise NotFound("链接无效", code="link_invalid") from None
    expected = link_signature(
        key=signing_key, material_id=material_id, variant=variant, viewer=viewer, expires=expires_at
    )
    if not hmac.compare_digest(expected, signature or "") or expires_at < time.time():
        raise Forbidden("链接已失效，请刷新后重试", code="link_expired")


def platform_links(*, signing_key: bytes, base_url: str):
    """A function giving the platform signed, expiring download links for material ids."""

    async def links(ids: list[str]) -> list[dict]:
        rows = {m.id: m for m in await Material.filter(id__in=[i for i in ids if isinstance(i, str)])}
        expires = int(time.time()) + PLATFORM_LINK_TTL_S
        out = []
        for material_id in ids:
            material = rows.get(material_id)
            if material is None:
                continue
            out.append(
                {
                    "url": file_url(
                        signing_key=signing_key,
                        base_url=base_url,
                        material_id=material.id,
                        variant="file",
                        viewer=PLATFORM_VIEWER,
                        expires=expires,
                    ),
                    "sha256": material.sha256,
                    "mime": material.mime,
                    "expires_at": expires,
                }
            )
        return out

    return links
