"""Browser fixtures and helpers shared by the end-to-end UI tests (real Chromium, Playwright).

``ui`` is a fresh browser context per test on pytest-django's live server that records console
errors, CSP violations, page errors and failed requests; tests end with none of them.
The fixtures are registered in tests/conftest.py; the helpers are imported by the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response

from tests.e2e_support import chromium_browser

BROWSER_TIMEOUT_MS = 30_000
PASSWORD = "correct horse battery staple"  # the UserFactory default
TENANT = "alpha"  # tests/conftest.py: tenant_a
TOPBAR_BACKGROUND = "rgb(20, 26, 39)"  # .topbar in static/css/tollgate.css
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`
                + ` at ${event.sourceFile}:${event.lineNumber}`);
});
"""


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; every test gets its own context (see `ui`)."""
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def base_url(live_server) -> str:
    return f"http://127.0.0.1:{urlsplit(live_server.url).port}"


@pytest.fixture
def ui_settings(settings) -> None:
    # Plain HTTP: secure (and so __Host-) cookies would never come back from the browser.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.SESSION_COOKIE_NAME = "tollgate_session"
    settings.CSRF_COOKIE_NAME = "tollgate_csrf"
    settings.STATIC_URL = "/static/"
    assert not settings.OIDC_ENABLED, "these tests use the password form"


@dataclass
class BrowserProblems:
    """Everything the browser complained about while a test ran."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"page error: {m}" for m in self.page_errors]
            + [f"response: {m}" for m in self.bad_responses]
            + [f"request failed: {m}" for m in self.failed_requests]
        )


@dataclass
class UI:
    page: Page
    base_url: str
    problems: BrowserProblems
    static_responses: dict[str, int]

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def tenant_url(self, rest: str = "") -> str:
        return self.url(f"/t/{TENANT}/{rest}")

    def forget_console_errors(self, containing: str) -> None:
        """Drop expected console errors, e.g. Chromium's line for every 4xx/5xx response."""
        errors = self.problems.console_errors
        errors[:] = [m for m in errors if containing not in m]

    def assert_no_browser_problems(self) -> None:
        problems = self.problems.all()
        assert not problems, "the browser reported problems:\n" + "\n".join(problems)


@pytest.fixture
def ui(browser, base_url, ui_settings) -> Iterator[UI]:
    """A fresh browser context (no session) whose console errors are all recorded."""
    context = browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    # Tollgate links /static/favicon.svg, yet Chromium may still ask for /favicon.ico, which
    # would reach the live server
    # while the test reads the database (on SQLite both share one in-memory connection).
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    # Chromium logs a CSP violation as a console error; the page's own violation event is
    # logged as well, so a change of wording or a silent refusal cannot hide one.
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    problems = BrowserProblems()
    static_responses: dict[str, int] = {}

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location.get("url", "")
            problems.console_errors.append(f"{message.text} ({location})")

    def on_response(response: Response) -> None:
        path = urlsplit(response.url).path
        if path.startswith("/static/"):
            static_responses[path] = response.status
        if response.status >= 500 or (path.startswith("/static/") and response.status >= 400):
            problems.bad_responses.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
    page.on("response", on_response)
    page.on(
        "requestfailed",
        lambda request: None if navigation_aborted_icon(request) else
        problems.failed_requests.append(f"{request.url}: {request.failure}"),
    )
    try:
        yield UI(page=page, base_url=base_url, problems=problems,
                 static_responses=static_responses)
    finally:
        context.close()


def navigation_aborted_icon(request) -> bool:
    """The favicon's request, cancelled because the page navigated on before it finished: the
    browser's own bookkeeping, not a failure of the page."""
    return (urlsplit(request.url).path == "/static/favicon.svg"
            and request.failure == "net::ERR_ABORTED")


def sign_in(ui: UI, username: str = "alice", password: str = PASSWORD,
            landing: str | None = None) -> None:
    """Through the real password form; a single tenant sends the user straight into it."""
    page = ui.page
    page.goto(ui.url("/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(landing or ui.tenant_url())


def nav(ui: UI, link: str, heading: str) -> None:
    """Follow a link of the top bar's tenant navigation; the page shows its heading."""
    ui.page.locator("nav.tenant-nav").get_by_role("link", name=link, exact=True).click()
    expect_heading(ui.page, heading)


def expect_heading(page: Page, heading: str) -> None:
    """The page shows `heading`, and has loaded: its deferred scripts (htmx) have run."""
    page.wait_for_load_state("load")
    h1 = page.locator("main h1").first
    assert h1.inner_text().strip() == heading, f"{page.url}: {h1.inner_text()!r}"


def expect_styled(page: Page) -> None:
    """tollgate.css applied: the top bar is dark (unstyled, it would be transparent)."""
    background = page.locator("header.topbar").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert background == TOPBAR_BACKGROUND, f"{page.url}: top bar background {background}"


def messages(page: Page) -> list[str]:
    return [m.strip() for m in page.locator("ul.messages li").all_inner_texts()]


def table_rows(page: Page, selector: str) -> list[list[str]]:
    rows = page.locator(f"{selector} tbody tr")
    return [[c.strip() for c in row.locator("td").all_inner_texts()] for row in rows.all()]


# --- Scenarios ---------------------------------------------------------------------------------
