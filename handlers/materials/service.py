"""Material use cases: upload through the processing pipeline, sealed storage, reuse across drafts,
viewing and download through signed links, deletion that never touches what a submitted case relies
on, and officials' watermarked, audited copies.

CPU work (decoding, resizing, PDF checks) runs in a small thread pool; when the pool and its
short queue are full, uploads are refused with `Busy` (and a Retry-After) instead of piling
up. A material is written file-first, row-last: a crash in between leaves an orphan object,
never a row pointing at nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from tortoise.exceptions import IntegrityError

from core.errors import Busy, Conflict, NotFound, Unprocessable, ValidationFailed
from handlers import audit
from handlers.cases.access import case_for_official
from handlers.materials.links import PLATFORM_VIEWER, citizen_links, verify
from handlers.materials.pipeline import PDF, Processed, keep_pixel_blocks, process, sniff, watermark
from handlers.numbers import CHINA
from storage.files import FileSealer, FileStore
from storage.models import ActorType, Draft, Material, User

IMAGE_LIMIT = 10 * 1024 * 1024
PDF_LIMIT = 20 * 1024 * 1024
UPLOAD_LIMIT = PDF_LIMIT  # the largest any kind may be; the per-type limit applies once sniffed
KIND_MIMES = {
    "jpg": {"image/jpeg"},
    "png": {"image/jpeg"},
    "webp": {"image/jpeg"},
    "heic": {"image/jpeg"},
    "pdf": {"application/pdf"},
}


def limit_for(head: bytes) -> int:
    """The size limit of an upload whose first bytes are head: a PDF may be larger than a photo."""
    return PDF_LIMIT if sniff(head) == PDF else IMAGE_LIMIT


class Pipeline:
    """A bounded pool for the CPU work of uploads."""

    def __init__(self, workers: int = 2, queue: int = 4):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media")
        keep_pixel_blocks(workers)  # each worker reuses its pixel memory instead of faulting in fresh pages
        self._capacity = workers + queue
        self._in_flight = 0

    async def process(self, data: bytes) -> Processed:
        if self._in_flight >= self._capacity:
            raise Busy("上传的人较多，请稍后重试", code="busy", retry_after=2)
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, process, data)
        finally:
            self._in_flight -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def view(material: Material, *, urls: dict | None = None) -> dict:
    """The citizen's view of a material, with its signed links when given."""
    body = {
        "id": material.id,
        "kind": material.kind,
        "mime": material.mime,
        "size": material.size,
        "sha256": material.sha256,
        "width": material.width,
        "height": material.height,
        "pages": material.pages,
        "quality_warnings": material.warnings,
        "valid_until": material.valid_until.isoformat() if material.valid_until else None,
        "expired": bool(material.valid_until and material.valid_until < datetime.now(UTC).date()),
        "locked": material.locked_at is not None,
        "created_at": material.created_at.isoformat() if material.created_at else None,
    }
    if urls:
        body.update(urls)
    return body


class Materials:
    """Material use cases for the mini-program."""

    def __init__(self, *, store: FileStore, sealer: FileSealer, pipeline: Pipeline, signing_key: bytes, base_url: str):
        self.store, self.sealer, self.pipeline = store, sealer, pipeline
        self._signing_key, self.base_url = signing_key, base_url.rstrip("/")

    async def upload(self, *, user: User, kind: str, data: bytes, valid_until=None) -> tuple[Material, bool]:
        """(material, created): the same bytes uploaded again by the same citizen return the first one."""
        digest = hashlib.sha256(data).hexdigest()
        existing = await Material.get_or_none(user_id=user.id, sha256=digest)
        if existing is not None:
            return existing, False
        processed = await self.pipeline.process(data)
        owner = str(user.id)
        name = self.sealer.object_name(owner, digest)
        # Encryption of megabytes is CPU work: keep it off the event loop.
        sealed, file_key = await asyncio.to_thread(self.sealer.seal, processed.data)
        await self.store.put(name, sealed)
        thumb_name = thumb_key = None
        if processed.thumbnail:
            thumb_name = self.sealer.object_name(owner, digest, "thumb")
            sealed_thumb, thumb_key = await asyncio.to_thread(self.sealer.seal, processed.thumbnail)
            await self.store.put(thumb_name, sealed_thumb)
        try:
            material = await Material.create(
                id=secrets.token_hex(16),
                user_id=user.id,
                kind=kind,
                mime=processed.mime,
                size=len(processed.data),
                sha256=digest,
                width=processed.width,
                height=processed.height,
                pages=processed.pages,
                warnings=processed.warnings,
                object_name=name,
                file_key=file_key,
                thumb_object_name=thumb_name,
                thumb_key=thumb_key,
                valid_until=valid_until,
            )
        except IntegrityError:  # the same file uploaded twice at once: one row, one object
            return await Material.get(user_id=user.id, sha256=digest), False
        return material, True

    async def library(self, *, user: User) -> dict[str, list[Material]]:
        """The citizen's materials grouped by kind, newest first."""
        grouped: dict[str, list[Material]] = {}
        for material in await Material.filter(user_id=user.id).order_by("-created_at"):
            grouped.setdefault(material.kind, []).append(material)
        return grouped

    async def get(self, *, user: User, material_id: str) -> Material:
        """The citizen's own material; NotFound for anyone else's."""
        material = await Material.get_or_none(id=material_id, user_id=user.id)
        if material is None:
            raise NotFound("材料不存在", code="material_not_found")
        return material

    async def delete(self, *, user: User, material_id: str) -> None:
        """Deletes a material and its objects, unless a submitted case relies on it."""
        material = await self.get(user=user, material_id=material_id)
        if material.locked_at is not None:
            raise Conflict("该材料已用于提交的申请，不能删除", code="material_in_use")
        if not await Material.filter(id=material.id, locked_at=None).delete():
            raise Conflict("该材料已用于提交的申请，不能删除", code="material_in_use")
        for name in (material.object_name, material.thumb_object_name):
            if name and not await Material.filter(object_name=name).exists():
                await self.store.delete(name)

    async def attach(self, *, user: User, drafts, draft_id: str, slot: str, material_id: str) -> tuple[Draft, dict]:
        """Puts an existing material into a draft's slot (no re-upload), checking the slot accepts its kind."""
        draft = await drafts.get(user=user, draft_id=draft_id)
        application = await drafts.application_of(draft)
        slot_def = next((m for m in application.materials if m["key"] == slot), None)
        if slot_def is None:
            raise NotFound("该事项没有这项材料", code="slot_not_found")
        material = await self.get(user=user, material_id=material_id)
        allowed = set().union(*(KIND_MIMES.get(k, set()) for k in slot_def["kinds"]))
        if material.mime not in allowed:
            raise Unprocessable(
                f"“{slot_def['name']}”只接受 {'、'.join(slot_def['kinds'])} 格式",
                code="material_kind_not_allowed",
            )
        data = drafts.data_of(draft)
        attached = data.get("materials") if isinstance(data.get("materials"), dict) else {}
        current = list(attached[slot]) if isinstance(attached.get(slot), list) else []
        if material.id not in current:
            current.append(material.id)
        draft, data = await drafts.patch(
            user=user, draft_id=draft.id, version=draft.version, patch={"materials": {slot: current}}
        )
        return draft, data

    # -- viewing ------------------------------------------------------------------------

    def signed_urls(self, material: Material, *, viewer: str) -> dict:
        """Short-lived links for the file and thumbnail, bound to the viewer."""
        return citizen_links(signing_key=self._signing_key, base_url=self.base_url, material=material, viewer=viewer)

    async def download(
        self, *, material_id: str, variant: str, viewer: str, expires: str, signature: str
    ) -> tuple[bytes, str]:
        """(bytes, mime) of what a signed link points at, once the link and the viewer's right to it hold."""
        verify(
            signing_key=self._signing_key,
            material_id=material_id,
            variant=variant,
            viewer=viewer,
            expires=expires,
            signature=signature,
        )
        if viewer == PLATFORM_VIEWER:  # the core platform fetching a case's materials
            material = await Material.get_or_none(id=material_id)
        else:
            material = await Material.get_or_none(id=material_id, user_id=int(viewer) if viewer.isdigit() else -1)
        if material is None:
            raise NotFound("材料不存在", code="material_not_found")
        return await self.content(material, variant)

    async def content(self, material: Material, variant: str) -> tuple[bytes, str]:
        """(bytes, mime) of a material's file or thumbnail, opened from sealed storage."""
        if variant == "thumb":
            if not material.thumb_object_name:
                raise NotFound("该材料没有缩略图", code="thumbnail_not_found")
            sealed = await self.store.get(material.thumb_object_name)
            return await asyncio.to_thread(self.sealer.open, sealed, material.thumb_key), "image/jpeg"
        sealed = await self.store.get(material.object_name)
        return await asyncio.to_thread(self.sealer.open, sealed, material.file_key), material.mime


async def review_attached(user_id: int, attached: dict, materials: list[dict]) -> list[tuple[str, str, str]]:
    """(path, code, message) for every key of `data.materials` that may not go into a case.

    A key must be one of the application's slots, its value a list of ids, and each id one of
    the citizen's own materials of a kind the slot accepts. An id that is not theirs is refused
    under any key: a case locks what it holds, and another citizen's file must never be locked
    (or sent to the platform) through someone else's application.
    """
    slots = {m["key"]: m for m in materials}
    ids = {i for v in attached.values() if isinstance(v, list) for i in v if isinstance(i, str)}
    rows = {m.id: m for m in await Material.filter(id__in=list(ids), user_id=user_id)} if ids else {}
    problems = []
    for key, value in attached.items():
        path, slot = f"materials.{key}", slots.get(key)
        if slot is None:
            problems.append((path, "slot_not_found", "该事项没有这项材料，请删除后再提交"))
            continue
        if not value:  # nothing attached: `material_problems` asks for it when it is required
            continue
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            problems.append((path, "invalid_type", f"“{slot['name']}”应为已上传文件的列表，请重新上传"))
            continue
        allowed = set().union(*(KIND_MIMES.get(k, set()) for k in slot["kinds"]))
        for material_id in value:
            material = rows.get(material_id)
            if material is None:
                problems.append((path, "material_not_found", f"“{slot['name']}”中的文件不存在，请重新上传"))
                break
            if material.mime not in allowed:
                problems.append(
                    (path, "material_kind_not_allowed", f"“{slot['name']}”只接受 {'、'.join(slot['kinds'])} 格式")
                )
                break
    return problems


async def lock_for_case(user_id: int, attached: dict, materials: list[dict]) -> None:
    """Marks the citizen's own materials listed under the application's slots as used by a case.

    Locked materials can no longer be deleted. Review has refused anything else already; the
    filters here keep a lock from ever reaching another citizen's file all the same.
    """
    slots = {m["key"] for m in materials}
    ids = [i for key, v in attached.items() if key in slots and isinstance(v, list) for i in v if isinstance(i, str)]
    if ids:
        await Material.filter(id__in=ids, user_id=user_id, locked_at=None).update(locked_at=datetime.now(UTC))


async def official_copy(
    *, materials: Materials, official, case_no: str, material_id: str, reason: str, ip: str, request_id: str
) -> tuple[bytes, str]:
    """An official's copy of a case's material: rights checked, read audited, images watermarked.

    Only officials of the item's department (or admins) may see a case's materials. The stored
    original stays clean; the watermark "仅用于〔事项〕办理，他用无效" and the date are drawn on
    this copy only.
    """

    reason = (reason or "").strip()
    if not 4 <= len(reason) <= 200:
        raise ValidationFailed({"reason": "请填写查看原因（4至200字）"})
    case = await case_for_official(official=official, case_no=case_no)
    used = {i for ids in (case.materials or {}).values() for i in (ids if isinstance(ids, list) else [])}
    if material_id not in used:
        raise NotFound("该办件没有这份材料", code="material_not_found")
    material = await Material.get(id=material_id)
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="material.read",
        target_type="material",
        target_id=material.id,
        request_id=request_id,
        ip=ip,
        detail={"case_no": case.case_no, "reason": reason, "kind": material.kind},
    )
    data, mime = await materials.content(material, "file")
    if mime == "image/jpeg":
        stamp = f"仅用于〔{case.service_name}〕办理，他用无效 {datetime.now(CHINA):%Y-%m-%d}"
        data = await asyncio.get_running_loop().run_in_executor(None, watermark, data, stamp)
    return data, mime
