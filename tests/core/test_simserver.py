"""core.simserver, the frame both simulators stand in: control routes, bodies, the app factory and `main`.

Fast: no server is started; the simulators' own tests drive the same code over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest
from sanic import Blueprint, Sanic

from core import simserver
from core.simserver import SimError

log = logging.getLogger("tests.simserver")


def _request(body: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(body=body)


def _answer(handler, body: bytes = b"") -> tuple[int, dict]:
    response = asyncio.run(simserver.control_route(handler, log=log, path="/__sim__/x")(_request(body)))
    return response.status, json.loads(response.body)


def test_control_route_answers_results_errors_and_crashes_as_json():
    async def later(request):
        return {"later": True}

    def refuse(request):
        raise SimError(409, "busy", "忙", {"why": "test"})

    def crash(request):
        raise RuntimeError("boom")

    assert _answer(lambda request: {"ok": True}) == (200, {"ok": True})
    assert _answer(later) == (200, {"later": True})
    assert _answer(refuse) == (409, {"code": "busy", "message": "忙", "details": {"why": "test"}})
    assert _answer(crash) == (500, simserver.INTERNAL_ERROR)


def test_json_object_reads_objects_and_refuses_the_rest():
    assert simserver.json_object(_request()) == {}
    assert simserver.json_object(_request('{"名":1}'.encode())) == {"名": 1}
    for body, empty_ok in ((b"", False), (b"{oops", True), (b"[1]", True), (b"\xff", True)):
        with pytest.raises(SimError) as refused:
            simserver.json_object(_request(body), empty_ok=empty_ok)
        assert (refused.value.status, refused.value.code) == (400, "malformed_json")


def test_check_fields_lists_every_bad_field():
    simserver.check_fields({})
    with pytest.raises(SimError) as refused:
        simserver.check_fields({"a": "此项为必填项", "b": "应为整数"})
    assert refused.value.status == 422
    assert refused.value.body()["details"] == {"fields": {"a": "此项为必填项", "b": "应为整数"}}


def test_dumps_is_compact_and_keeps_chinese():
    assert simserver.dumps({"a": [1, "模拟"]}) == '{"a":[1,"模拟"]}'


def test_create_app_replaces_an_app_of_the_same_name():
    first = simserver.create_app("simserver_probe", Blueprint("probe_a"), state="one", log=log)
    second = simserver.create_app("simserver_probe", Blueprint("probe_b"), state="two", log=log)
    assert Sanic.get_app("simserver_probe") is second is not first
    assert second.ctx.state == "two" and "probe_b" in second.blueprints
    assert second.config.FALLBACK_ERROR_FORMAT == "json"
    Sanic.unregister_app(second)


def test_main_parses_host_port_and_own_options_then_runs():
    runs: list[tuple[object, dict]] = []

    class App:
        def run(self, **kwargs):
            runs.append((self.args, kwargs))

    def build(args):
        app = App()
        app.args = args
        return app

    simserver.main(
        ["--port", "9001", "--script", "fee"],
        prog="probe",
        description="probe",
        port=8000,
        build=build,
        options=lambda parser: parser.add_argument("--script", default="happy"),
    )
    [(args, kwargs)] = runs
    assert (args.host, args.port, args.script) == ("127.0.0.1", 9001, "fee")
    assert kwargs == {"host": "127.0.0.1", "port": 9001, "single_process": True, "access_log": False, "motd": False}
