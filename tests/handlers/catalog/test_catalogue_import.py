"""Catalogue import is all or nothing and names every problem with its path."""

from __future__ import annotations

import pickle

import pytest
import yaml

from core.errors import Unprocessable
from handlers.catalog.publish import DEMO_CATALOGUE
from handlers.catalog.schema import CatalogueError, parse_catalogue
from tests.conftest import base_env, run_cli


def test_broken_catalogue_lists_every_problem_and_changes_nothing(databases, tmp_path):
    db = databases.new("sqlite")
    env = base_env(DATABASE_URL=db.url)
    data = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
    data["items"][0]["fee"] = {"kind": "fixed"}  # no amount
    data["items"][1]["promised_days"] = 999  # beyond the legal limit
    data["items"][2]["department"] = "nowhere"
    data["items"][3]["code"] = data["items"][4]["code"]
    data["items"][5]["materials"][0]["kinds"] = ["exe"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

    result = run_cli("import-catalogue", str(broken), env=env, cwd=tmp_path)
    assert result.returncode == 1
    err = result.stderr
    assert "nothing changed" in err
    assert "items[0].fee: 固定收费须填写 amount_fen" in err
    assert "items[1]: 承诺时限（promised_days）不能超过法定时限（legal_days）" in err
    assert "items[5].materials[0].kinds[0]: 应为以下之一" in err
    assert "items[2].department: departments 中没有部门“nowhere”" in err
    assert "items[4].code: 与 items[3] 的事项编码" in err
    assert db.query("SELECT count(*) FROM service_items") == [(0,)]


def test_the_error_is_a_domain_error_with_every_problem():
    """Without a database: what a console upload would show, and it survives a process pool."""
    data = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
    data["items"][0]["fee"] = {"kind": "fixed"}
    data["items"][2]["department"] = "nowhere"
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(yaml.safe_dump(data, allow_unicode=True))
    error = caught.value
    assert isinstance(error, Unprocessable) and error.code == "catalogue_invalid"
    assert [(p["path"], p["code"], p["message"]) for p in error.problems] == [
        ("items[0].fee", "value_error", "固定收费须填写 amount_fen（整数，单位为分）"),
        ("items[2].department", "unknown_department", "departments 中没有部门“nowhere”"),
    ]
    assert all(isinstance(p["line"], int) and p["line"] > 1 for p in error.problems)
    assert error.body()["details"] == {"problems": error.problems}
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


def test_changed_item_becomes_a_new_version(databases, tmp_path):
    db = databases.new("sqlite")
    env = base_env(DATABASE_URL=db.url)
    assert run_cli("load-demo", env=env, cwd=tmp_path).returncode == 0
    data = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
    data["items"][0]["promised_days"] = 10
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = run_cli("import-catalogue", str(changed), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"1 item(s) published, {len(data['items']) - 1} unchanged" in result.stdout
    code = data["items"][0]["code"]
    rows = db.query(f"SELECT version, is_current FROM service_items WHERE code = '{code}' ORDER BY version")
    assert rows == [(1, 0), (2, 1)]
