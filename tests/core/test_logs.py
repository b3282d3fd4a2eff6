"""Logs are JSON lines with the request id, and never carry ID numbers, phones or tokens."""

from __future__ import annotations

import json
import logging

from core.logs import JsonFormatter, MaskingFilter, RequestIdFilter, mask_text, request_id_var

ID_NUMBER = "11010519491231002X"
PHONE = "13812345678"


def test_mask_text_hides_personal_data():
    text = f"id={ID_NUMBER} phone={PHONE} +86 13900001111 Authorization: Bearer abc.def.ghi token=s3cr3t"
    masked = mask_text(text)
    assert ID_NUMBER not in masked and "110***********002X" in masked
    assert PHONE not in masked and "138****5678" in masked
    assert "13900001111" not in masked
    assert "abc.def.ghi" not in masked and "s3cr3t" not in masked


def test_mask_text_leaves_ordinary_numbers():
    assert mask_text("case ZB20261122000123 took 1234567 us") == "case ZB20261122000123 took 1234567 us"


def test_record_args_and_extras_are_masked():
    record = logging.LogRecord("zhangban", logging.INFO, __file__, 1, "user %s phone %s", (ID_NUMBER, PHONE), None)
    record.detail = {"phone": PHONE}
    request_id_var.set("req-9")
    RequestIdFilter().filter(record)
    MaskingFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-9"
    assert ID_NUMBER not in json.dumps(line, ensure_ascii=False) and PHONE not in json.dumps(line)
    assert line["detail"] == {"phone": "138****5678"}


def test_server_log_lines_are_masked_json_with_request_id(server, client):
    client.get(f"/nope?id_number={ID_NUMBER}&phone={PHONE}", headers={"X-Request-ID": "logtest-1"})
    client.get("/healthz", headers={"Authorization": "Bearer leaked-token-value"})
    log = server.log()
    assert ID_NUMBER not in log and PHONE not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "logtest-1"]
    assert mine, "the access log line carries the request id"
    assert "110***********002X" in mine[0]["request"]
