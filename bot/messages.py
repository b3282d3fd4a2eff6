"""Official-account callback messages: safe parsing, retry dedup keys and passive replies.

`parse` reads the plaintext XML WeChat pushes (after `OACrypto.decrypt` in safe mode) with
defusedxml: DTDs, entities and external references are refused outright, so a billion-laughs or
XXE body is a `BadMessage` and nothing is ever read from disk or the network.

WeChat retries a callback it got no answer to within 5 s, three times. `dedup_key` is the key its
guide recommends: MsgId for messages, FromUserName + CreateTime for events (plus the event and its
key, since one click can push several events in the same second).

The reply builders produce the passive-reply XML of WeChat's guide (CDATA where it uses it), with
To/From swapped and CreateTime set. `success()` is the body that tells WeChat "received, nothing to
say" without a retry.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_BODY_BYTES = 64 * 1024
MAX_ELEMENTS = 512
MAX_DEPTH = 6
MAX_NEWS_ARTICLES = 8  # for events (subscribe, click, ...); a reply to a user's message shows only 1
MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link", "event"})

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # OpenIDs and gh_ account ids
_MSG_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[a-z0-9_]{1,64}")  # MsgType and Event, lowercased
_CREATE_TIME = re.compile(r"[0-9]{1,12}")
# Characters XML 1.0 cannot carry at all, even inside CDATA.
_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ARTICLE_KEYS = frozenset({"title", "description", "url", "picurl"})


class BadMessage(Exception):
    """A callback body we will not process; `reason` is a short English phrase for the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Location(NamedTuple):
    """A position: `scale` is the map zoom of a location message, None for the LOCATION event
    (whose accuracy in metres is `raw["Precision"]`); `label` is the place's name, if any."""

    lat: float
    lng: float
    scale: int | None
    label: str | None


@dataclass(frozen=True)
class Message:
    """One pushed message or event. `raw` holds every leaf element's text; nested ones are keyed by
    their dotted path (`SendLocationInfo.Label`), repeats get `[n]` (`SendPicsInfo.PicList.item.PicMd5Sum[1]`)."""

    to_user: str  # our account (gh_...)
    from_user: str  # the citizen's OpenID
    create_time: int
    msg_type: str  # text, image, voice, video, shortvideo, location, link, event, ...
    msg_id: str | None = None
    content: str | None = None  # text
    recognition: str | None = None  # voice, when speech recognition is on
    media_id: str | None = None  # image, voice, video, shortvideo
    pic_url: str | None = None  # image
    location: Location | None = None  # location message, LOCATION and location_select events
    event: str | None = None  # lowercased: subscribe, unsubscribe, scan, location, click, view, ...
    event_key: str | None = None
    raw: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def scene(self) -> str | None:
        """The QR-code scene of a subscribe (without its `qrscene_` prefix) or scan event."""
        if self.event == "subscribe" and self.event_key and self.event_key.startswith("qrscene_"):
            return self.event_key[len("qrscene_") :] or None
        if self.event == "scan":
            return self.event_key
        return None


# -- parsing --------------------------------------------------------------------------------


def parse(xml: bytes, *, limit: int = MAX_BODY_BYTES) -> Message:
    """The message in a callback body; raises BadMessage for anything oversized, hostile or malformed."""
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    if not isinstance(xml, (bytes, bytearray)) or not xml:
        raise BadMessage("empty body")
    if len(xml) > limit:
        raise BadMessage("body too large")
    try:
        root = fromstring(bytes(xml), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise BadMessage(f"forbidden XML: {type(exc).__name__}") from None
    except (ParseError, ValueError, LookupError):
        raise BadMessage("malformed XML") from None
    if root.tag != "xml":
        raise BadMessage("root element is not <xml>")
    raw = _flatten(root)

    msg_type = _required(raw, "MsgType").lower()
    if not _TOKEN.fullmatch(msg_type):
        raise BadMessage("bad MsgType")
    to_user, from_user = _required(raw, "ToUserName"), _required(raw, "FromUserName")
    if not _ID.fullmatch(to_user) or not _ID.fullmatch(from_user):
        raise BadMessage("bad user name")
    create_time = _required(raw, "CreateTime")
    if not _CREATE_TIME.fullmatch(create_time):
        raise BadMessage("bad CreateTime")
    msg_id = _optional(raw, "MsgId")
    if msg_id is not None and not _MSG_ID.fullmatch(msg_id):
        raise BadMessage("bad MsgId")

    event = event_key = location = None
    if msg_type == "event":
        event = _required(raw, "Event").lower()
        if not _TOKEN.fullmatch(event):
            raise BadMessage("bad Event")
        event_key = _optional(raw, "EventKey")
        if event == "location":
            location = _location(raw, "Latitude", "Longitude", None, None)
        elif event == "location_select" and "SendLocationInfo.Location_X" in raw:
            p = "SendLocationInfo."
            location = _location(raw, p + "Location_X", p + "Location_Y", p + "Scale", p + "Label")
    elif msg_type == "location":
        location = _location(raw, "Location_X", "Location_Y", "Scale", "Label")

    return Message(
        to_user=to_user,
        from_user=from_user,
        create_time=int(create_time),
        msg_type=msg_type,
        msg_id=msg_id,
        content=raw.get("Content") or None,
        recognition=raw.get("Recognition") or None,
        media_id=_optional(raw, "MediaId"),
        pic_url=_optional(raw, "PicUrl"),
        location=location,
        event=event,
        event_key=event_key,
        raw=raw,
    )


def _flatten(root: Element) -> dict[str, str]:
    """Leaf texts by dotted path, without recursion; duplicate top-level fields are refused."""
    raw: dict[str, str] = {}
    stack: list[tuple[Element, str, int]] = [(child, str(child.tag), 1) for child in reversed(root)]
    count = 0
    while stack:
        element, path, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise BadMessage("too many elements")
        if depth > MAX_DEPTH:
            raise BadMessage("too deeply nested")
        children = list(element)
        if children:
            stack.extend((child, f"{path}.{child.tag}", depth + 1) for child in reversed(children))
            continue
        if path in raw and depth == 1:
            raise BadMessage(f"duplicate {path}")
        key, n = path, 1
        while key in raw:
            key, n = f"{path}[{n}]", n + 1
        raw[key] = element.text or ""
    return raw


def _required(raw: Mapping[str, str], key: str) -> str:
    value = raw.get(key, "").strip()
    if not value:
        raise BadMessage(f"missing {key}")
    return value


def _optional(raw: Mapping[str, str], key: str) -> str | None:
    return raw.get(key, "").strip() or None


def _location(
    raw: Mapping[str, str], lat_key: str, lng_key: str, scale_key: str | None, label_key: str | None
) -> Location:
    try:
        lat, lng = float(_required(raw, lat_key)), float(_required(raw, lng_key))
        scale_text = _optional(raw, scale_key) if scale_key else None
        scale = int(float(scale_text)) if scale_text is not None else None
    except (ValueError, OverflowError):
        raise BadMessage("bad location") from None
    if not (math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        raise BadMessage("bad location")
    return Location(lat, lng, scale, _optional(raw, label_key) if label_key else None)


def dedup_key(m: Message) -> str:
    """The key under which a retried callback is recognised (WeChat retries up to three times)."""
    if m.msg_type == "event":
        return f"evt:{m.from_user}:{m.create_time}:{m.event}:{m.event_key or ''}"
    if m.msg_id:
        return f"msg:{m.from_user}:{m.msg_id}"
    return f"msg:{m.from_user}:t{m.create_time}:{m.msg_type}"  # no MsgId: WeChat's event rule


# -- passive replies ------------------------------------------------------------------------


def _cdata(value: str) -> str:
    """`value` as CDATA: characters XML cannot carry dropped, newlines normalised, `]]>` split."""
    text = _XML_ILLEGAL.sub("", str(value)).replace("\r\n", "\n").replace("\r", "\n")
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _head(m: Message, msg_type: str, create_time: int | None) -> str:
    ts = int(time.time()) if create_time is None else int(create_time)
    return (
        f"<ToUserName>{_cdata(m.from_user)}</ToUserName><FromUserName>{_cdata(m.to_user)}</FromUserName>"
        f"<CreateTime>{ts}</CreateTime><MsgType>{_cdata(msg_type)}</MsgType>"
    )


def text_reply(m: Message, content: str, *, create_time: int | None = None) -> str:
    """A passive text reply to `m` (newlines show as line breaks in WeChat)."""
    if not content or not content.strip():
        raise ValueError("reply content is empty")
    return f"<xml>{_head(m, 'text', create_time)}<Content>{_cdata(content)}</Content></xml>"


def news_reply(m: Message, articles: Sequence[Mapping[str, str]], *, create_time: int | None = None) -> str:
    """A passive news (图文) reply: `articles` are `{title, description, url, picurl}`.

    At most 8 articles; WeChat shows only one in answer to a user's own message, so more than one
    is refused there and allowed only in answer to an event (subscribe, menu click, ...).
    """
    if not articles:
        raise ValueError("a news reply needs at least one article")
    limit = MAX_NEWS_ARTICLES if m.msg_type == "event" else 1
    if len(articles) > limit:
        raise ValueError(f"at most {limit} article(s) in a news reply to a {m.msg_type} message")
    items = []
    for article in articles:
        unknown = set(article) - _ARTICLE_KEYS
        if unknown:
            raise ValueError(f"unknown article keys: {sorted(unknown)}")
        title, url = article.get("title") or "", article.get("url") or ""
        picurl, description = article.get("picurl") or "", article.get("description") or ""
        if not title.strip():
            raise ValueError("article title is empty")
        for name, value in (("url", url), ("picurl", picurl)):
            if (value or name == "url") and not value.startswith(("https://", "http://")):
                raise ValueError(f"article {name} must be an http(s) URL")
        items.append(
            f"<item><Title>{_cdata(title)}</Title><Description>{_cdata(description)}</Description>"
            f"<PicUrl>{_cdata(picurl)}</PicUrl><Url>{_cdata(url)}</Url></item>"
        )
    return (
        f"<xml>{_head(m, 'news', create_time)}<ArticleCount>{len(items)}</ArticleCount>"
        f"<Articles>{''.join(items)}</Articles></xml>"
    )


def success() -> str:
    """The literal `success` body: WeChat stops retrying and shows the citizen nothing."""
    return "success"
