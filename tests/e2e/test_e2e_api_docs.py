"""End to end: Swagger UI (/api/docs/) in a real browser under the product's strict CSP.

The page and its assets come from this server only (drf-spectacular-sidecar; the machines have
no internet), its init script is a file of its own (the split view), and it reads the schema
and calls the API with the signed-in person's session.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Response

from tests.e2e_support import chromium_browser
from tests.ui_support import navigation_aborted_icon

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"  # the UserFactory default
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def base_url(live_server, settings) -> str:
    # Plain HTTP: secure (and so __Host-) cookies would never come back from the browser.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.SESSION_COOKIE_NAME = "tollgate_session"
    settings.CSRF_COOKIE_NAME = "tollgate_csrf"
    return f"http://127.0.0.1:{urlsplit(live_server.url).port}"


def test_swagger_ui_works_under_the_csp_and_calls_the_api(browser, base_url, alice):
    context = browser.new_context()
    context.set_default_timeout(30_000)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    # The sign-in page has no icon; Chromium's automatic /favicon.ico request is not a problem.
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page = context.new_page()
    problems: list[str] = []
    origins: set[str] = set()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    def on_response(response: Response) -> None:
        origins.add(f"{urlsplit(response.url).scheme}://{urlsplit(response.url).netloc}")
        if response.status >= 400:
            problems.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", lambda request: None if navigation_aborted_icon(request)
            else problems.append(f"failed: {request.url}"))
    try:
        page.goto(f"{base_url}/api/docs/")
        page.wait_for_url(f"{base_url}/login/?next=/api/docs/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base_url}/api/docs/")

        # The schema loaded (with the session) and Swagger UI rendered its operations.
        page.locator(".swagger-ui .info .title").filter(has_text="Tollgate API").wait_for()
        operation = page.locator(".opblock-get").filter(
            has=page.locator("[data-path='/api/v1/t/{tenant_slug}/servers/']")
        ).first
        operation.wait_for()

        # Try it out: Swagger UI calls the API with the same session.
        operation.locator(".opblock-summary").click()
        page.get_by_role("button", name="Try it out").click()
        operation.locator("input[placeholder='tenant_slug']").fill("alpha")
        operation.get_by_role("button", name="Execute").click()
        status = operation.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip() == "200"
    finally:
        context.close()
    assert not problems, "\n".join(problems)
    assert origins == {base_url}
