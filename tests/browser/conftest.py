"""Browser tests: Playwright drives Debian's Chromium (headless, no sandbox, no background
networking) against the run's real server. `.ci/run` installs the `chromium` package.

Screenshots are test artifacts under `var/test-artifacts/screenshots/` (kept out of git by
`.gitignore`'s `var/`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    """Debian's Chromium (never a browser build downloaded by Playwright)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class ConsoleBrowser:
    """Opens pages of the run's server, each in its own browser context (its own cookies)."""

    def __init__(self, server, browser: Browser):
        self.server, self.browser = server, browser
        self.contexts = []
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def allow(self, text: str) -> None:
        """A console error the test causes on purpose (e.g. the 401 of a refused sign-in page)."""
        self.allowed.append(text)

    def unexpected_errors(self) -> list[str]:
        return [error for error in self.errors if not any(text in error for text in self.allowed)]

    def new_page(self) -> Page:
        context = self.browser.new_context(base_url=self.server.url, locale="zh-CN")
        self.contexts.append(context)
        page = context.new_page()
        # A page that breaks the CSP or throws is a failed page, not a warning.
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def official(self, department: str, *roles: str) -> tuple[str, str]:
        """A new official of `department` with `roles`, created through the CLI: (username, password)."""
        username, password = f"web{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        role_args = [arg for role in roles for arg in ("--role", role)]
        created = self.server.cli(
            "create-official",
            "--username",
            username,
            "--department",
            department,
            *role_args,
            "--password-stdin",
            input=password + "\n",
        )
        assert created.returncode == 0, created.stderr
        return username, password

    def sign_in(self, department: str, *roles: str) -> Page:
        """A page signed in through the login form as a new official."""
        username, password = self.official(department, *roles)
        page = self.new_page()
        page.goto("/console/login")
        page.get_by_label("用户名").fill(username)
        page.get_by_label("密码").fill(password)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url("**/console/**")
        assert "/console/login" not in page.url, page.content()[:2000]
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def console(server, browser) -> Iterator[ConsoleBrowser]:
    opened = ConsoleBrowser(server, browser)
    yield opened
    opened.close()
    assert not opened.unexpected_errors(), opened.errors
