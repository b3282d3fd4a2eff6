"""Migrations build the schema on an empty database and are idempotent."""

from __future__ import annotations

import pytest
import yaml

from handlers.catalog.publish import DEMO_CATALOGUE
from tests.conftest import backends, base_env, run_cli

TABLES = {
    "users",
    "officials",
    "audit_log",
    "service_items",
    "cases",
    "case_events",
    "addresses",
    "refresh_tokens",
    "face_verifications",
    "drafts",
    "submissions",
    "daily_sequences",
    "catalogue_state",
}


def _tables(db) -> set[str]:
    if db.kind == "sqlite":
        rows = db.query("SELECT name FROM sqlite_master WHERE type='table'")
    else:
        rows = db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {r[0] for r in rows}


@pytest.mark.parametrize("kind", backends())
def test_migrate_on_empty_database_then_again_does_nothing(kind, databases, tmp_path):
    db = databases.new(kind)
    env = base_env(DATABASE_URL=db.url)
    first = run_cli("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied models.0001_initial" in first.stdout
    assert TABLES <= _tables(db)
    schema_after_first = _tables(db)

    second = run_cli("migrate", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stdout
    assert "database is up to date" in second.stdout
    assert _tables(db) == schema_after_first


@pytest.mark.slow
@pytest.mark.parametrize("kind", backends())
def test_demo_catalogue_loads_once(kind, databases, tmp_path):
    db = databases.new(kind)
    env = base_env(DATABASE_URL=db.url)
    first = run_cli("load-demo", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    count = len(yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))["items"])
    assert count >= 10
    assert f"{count} item(s) published" in first.stdout
    again = run_cli("load-demo", env=env, cwd=tmp_path)
    assert f"0 item(s) published, {count} unchanged" in again.stdout
    rows = db.query("SELECT code, version, name FROM service_items ORDER BY code")
    assert len(rows) == count and {r[1] for r in rows} == {1}
    names = {r[2] for r in rows}
    assert {"居民身份证换领", "公积金提取", "户口迁移"} <= names


def test_models_and_migrations_agree(tmp_path):
    """A model change without its migration would make makemigrations write a file."""
    import shutil

    from tests.conftest import ROOT

    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", "var", ".git", "__pycache__", "benchmarks"))
    # Run the copy's own server.py, so a detected change writes into the copy only.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(copy / "server.py"), "makemigrations"],
        env=base_env(DATABASE_URL=f"sqlite://{tmp_path}/x.sqlite3"),
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout, result.stdout
