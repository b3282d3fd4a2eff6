"""handlers.bot.answer routes a follower's message without a server: fakes stand in for the bot and WeChat.

The full callback (signatures, encryption, deadlines, real answers) is tested in test_bot.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from handlers.bot import IMAGE_HINT, VOICE_HINT, answer
from wechat.client import WeChatUnavailable


@dataclass
class FakeBot:
    """Records every follower update; answers name what was asked."""

    calls: list[tuple] = field(default_factory=list)
    unionids: dict[str, str] = field(default_factory=dict)

    async def follower(self, openid, *, unionid=None, subscribed=None):
        self.calls.append(("follower", openid, unionid, subscribed))
        if unionid:
            self.unionids[openid] = unionid
        return SimpleNamespace(oa_openid=openid, unionid=self.unionids.get(openid))

    def welcome(self):
        return "welcome"

    async def answer_text(self, follower, text, dedup_key):
        return f"text:{text}:{dedup_key}"

    async def answer_click(self, follower, key):
        return f"click:{key}"

    def halls_answer(self, lat, lng):
        return f"halls:{lat},{lng}"


@dataclass
class FakeOA:
    unionid: str | None = "u-1"
    fail: bool = False
    lookups: int = 0

    async def user_info(self, openid):
        self.lookups += 1
        if self.fail:
            raise WeChatUnavailable("down")
        return {"unionid": self.unionid} if self.unionid else {}


class FakeChecks:
    def __init__(self, allow: bool):
        self.allow, self.forgotten = allow, []

    async def forget(self, openid):
        self.forgotten.append(openid)
        self.allow = True

    async def should_look_up(self, openid):
        return self.allow


def message(msg_type, **fields):
    values = dict(content=None, recognition=None, location=None, event=None, event_key=None)
    return SimpleNamespace(from_user="o-1", msg_type=msg_type, **{**values, **fields})


def run(msg, *, bot=None, oa=None, checks=None):
    return asyncio.run(answer(bot=bot or FakeBot(), oa=oa or FakeOA(), message=msg, dedup_key="k", checks=checks))


@pytest.mark.parametrize(
    ("msg", "reply"),
    [
        (message("text", content="办身份证"), "text:办身份证:k"),
        (message("text"), "text::k"),
        (message("voice", recognition="查进度"), "text:查进度:k"),
        (message("voice"), VOICE_HINT),
        (message("image"), IMAGE_HINT),
        (message("video"), IMAGE_HINT),
        (message("shortvideo"), IMAGE_HINT),
        (message("location", location=(28.87, 105.44, 15, None)), "halls:28.87,105.44"),
        (message("location"), "welcome"),
        (message("link"), "welcome"),
        (message("event", event="subscribe"), "welcome"),
        (message("event", event="click", event_key="MENU_HALLS"), "click:MENU_HALLS"),
        (message("event", event="scan"), None),
        (message("event", event="location"), None),
        (message("event", event="unsubscribe"), None),
    ],
)
def test_every_message_type_and_event_has_its_answer(msg, reply):
    assert run(msg) == reply


def test_unsubscribe_marks_the_follower_without_a_wechat_call():
    bot, oa = FakeBot(), FakeOA()
    run(message("event", event="unsubscribe"), bot=bot, oa=oa)
    assert bot.calls == [("follower", "o-1", None, False)] and oa.lookups == 0


def test_the_unionid_is_looked_up_and_linked_when_unknown():
    bot, oa = FakeBot(), FakeOA()
    run(message("event", event="subscribe"), bot=bot, oa=oa)
    assert bot.calls == [("follower", "o-1", None, True), ("follower", "o-1", "u-1", None)]
    run(message("text", content="hi"), bot=bot, oa=oa)
    assert oa.lookups == 1  # known now: no second call


def test_a_failed_look_up_still_answers():
    assert run(message("text", content="hi"), oa=FakeOA(fail=True)) == "text:hi:k"


def test_the_look_up_is_rationed_but_a_subscribe_always_looks_again():
    oa, checks = FakeOA(unionid=None), FakeChecks(allow=False)
    run(message("text", content="hi"), oa=oa, checks=checks)
    assert oa.lookups == 0
    run(message("event", event="subscribe"), oa=oa, checks=checks)
    assert checks.forgotten == ["o-1"] and oa.lookups == 1
