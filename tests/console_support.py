"""The operator console under a real browser: Debian's headless Chromium driven by Selenium
(as tests/test_browser.py drives it), for test_console.py and test_console_cluster.py.

Selenium blocks, and an in-process node serves on the test's event loop, so every browser
call runs in a thread; every wait is bounded by ``WAIT_S``.

Screenshots of each page go to ``docs/console/`` only when ``WSGW_CONSOLE_SCREENSHOTS=1`` is
set (``WSGW_CONSOLE_SCREENSHOTS=1 pytest tests/test_console_cluster.py``): the suite does not
rewrite tracked files on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1360,1000")
WAIT_S = 10.0
PASSWORD = "console test password"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
XSS = '<img src=x onerror="window.__xss=1">'


def skip_without_chromium() -> Any:
    """The module's skip reason, if Chromium, chromedriver or selenium is missing."""
    if not shutil.which(CHROMIUM) or not shutil.which(CHROMEDRIVER):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)",
                    allow_module_level=True)
    return pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """One headless Chromium on a throwaway profile; Selenium Manager unused."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


class Console:
    """The console of the node at ``base`` (``http://127.0.0.1:<management port>``) in the
    browser."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get(self, path: str = "/console") -> None:
        await self._call(self.driver.get, self.base + path)

    async def run(self, script: str, *args: Any) -> Any:
        return await self._call(self.driver.execute_script, script, *args)

    async def login(self, password: str = PASSWORD) -> None:
        """Type the password into the form and press Enter (the keyboard, no mouse)."""
        from selenium.webdriver.common.keys import Keys

        await self.get("/console")
        field = await self.find("#password")
        await self._call(field.send_keys, password + Keys.ENTER)
        await self.until_js("const s = document.getElementById('served-by'); return s && s.textContent !== ''",
                            "the console page started (logged in)")

    async def find(self, css: str) -> Any:
        """The first element matching ``css`` once it exists."""
        from selenium.webdriver.common.by import By

        return await self.until(lambda d: (found := d.find_elements(By.CSS_SELECTOR, css)) and found[0], f"{css} appears")

    async def text(self, css: str) -> str:
        """The rendered text of the first element matching ``css`` once it exists and shows some
        text. Read in one script, so a page that re-renders or navigates meanwhile cannot leave
        a stale element in hand."""
        found = await self.until_js("const e = document.querySelector(arguments[0]);"
                                    " return e && e.innerText !== '' ? [e.innerText] : null",
                                    f"{css} shows some text", css)
        return str(found[0])

    async def shows(self, css: str, expected: str) -> None:
        """Wait until the first element matching ``css`` shows exactly ``expected``: the text an
        action (a form post that loads a new page, a lookup) puts there, not what was there before."""
        try:
            await self.until_js("const e = document.querySelector(arguments[0]);"
                                " return e !== null && e.innerText === arguments[1]", f"{css} shows {expected!r}",
                                css, expected)
        except AssertionError as exc:
            last = await self.run("const e = document.querySelector(arguments[0]); return e && e.innerText", css)
            raise AssertionError(f"{exc}; it shows {last!r}") from None

    async def texts(self, css: str) -> list[str]:
        return list(await self.run(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css))

    async def until(self, condition: Any, what: str) -> Any:
        """Wait for ``condition(driver)`` to be truthy; AssertionError naming ``what`` if never."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.wait import WebDriverWait

        wait = WebDriverWait(self.driver, WAIT_S, poll_frequency=0.05)
        try:
            return await self._call(wait.until, condition)
        except TimeoutException:
            status = self.driver.execute_script("return (document.getElementById('status') || {}).textContent")
            raise AssertionError(f"not within {WAIT_S} s: {what} (status line: {status!r})") from None

    async def until_js(self, script: str, what: str, *args: Any) -> Any:
        return await self.until(lambda d: d.execute_script(script, *args), what)

    async def _act(self, css: str, *steps: tuple[str, tuple[Any, ...]]) -> None:
        """Call ``steps`` (method name, arguments) on the element matching ``css``; found again
        if the page re-rendered it in between (the tables refresh every sample)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for attempt in range(3):
            element = await self.find(css)
            try:
                for name, args in steps:
                    await self._call(getattr(element, name), *args)
                return
            except StaleElementReferenceException:
                if attempt == 2:
                    raise

    async def press_enter(self, css: str) -> None:
        from selenium.webdriver.common.keys import Keys

        await self._act(css, ("send_keys", (Keys.ENTER,)))

    async def type(self, css: str, text: str) -> None:
        await self._act(css, ("clear", ()), ("send_keys", (text,)))

    async def go(self, hash_route: str) -> None:
        """Follow an in-page link (``#/tenants``...) as the page's own links do."""
        await self.run("window.location.hash = arguments[0]", hash_route)

    async def screenshot(self, name: str) -> None:
        """``docs/console/<name>.png`` when WSGW_CONSOLE_SCREENSHOTS=1, else nothing."""
        if os.environ.get("WSGW_CONSOLE_SCREENSHOTS") != "1":
            return
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.run("document.getElementById('status') && (document.getElementById('status').textContent = '')")
        for _ in range(2):  # the page's height follows the window's width once laid out again
            height = await self.run("return document.documentElement.scrollHeight")
            inner = await self.run("return window.outerHeight - window.innerHeight")
            await self._call(self.driver.set_window_size, 1360, max(700, min(2400, int(height) + int(inner) + 60)))
            await asyncio.sleep(0.3)  # the charts follow the new size
        await self._call(self.driver.save_screenshot, str(SHOTS / f"{name}.png"))
        await self._call(self.driver.set_window_size, 1360, 1000)

    async def prefer(self, scheme: str) -> None:
        """Have the browser prefer a ``dark`` or ``light`` colour scheme (as the OS setting does)."""
        await self._call(self.driver.execute_cdp_cmd, "Emulation.setEmulatedMedia",
                         {"features": [{"name": "prefers-color-scheme", "value": scheme}]})

    async def background(self) -> str:
        return str(await self.run("return getComputedStyle(document.body).backgroundColor"))

    async def no_script_ran(self) -> None:
        """Nothing a client sent ran as script or became an element."""
        assert await self.run("return window.__xss === undefined") is True
        assert await self.run("return document.querySelectorAll('main img').length") == 0
