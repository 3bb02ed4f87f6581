"""Headless Chromium for the explorer's browser tests and its timing script (Debian's chromium + chromium-driver).

Selenium drives Debian's own ChromeDriver (``/usr/bin/chromedriver``, the same version as the
browser), so nothing is downloaded at test time. `missing()` says in one line what is not
installed; setup (scripts/setup.sh) installs both packages with apt.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from typing import Any

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def _paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def missing() -> str | None:
    """Why no headless browser can run here (one line), or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    browser, driver = _paths()
    if browser is None:
        return "chromium is not installed (apt-get install chromium chromium-driver, or run scripts/setup.sh)"
    if driver is None:
        return "chromedriver is not installed (apt-get install chromium-driver, or run scripts/setup.sh)"
    return None


def chromium(width: int = 1500, height: int = 950) -> Any:
    """A headless Chromium driven by Selenium, with a fresh profile (removed when the driver is collected or the
    interpreter exits) and no background network traffic."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _paths()
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    profile = tempfile.mkdtemp(prefix="acdc-chromium-")
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(str(driver)), options=options)
    weakref.finalize(chrome, shutil.rmtree, profile, True)
    return chrome


_FREE_POINT = """
const hit = document.getElementById(arguments[0]);
hit.scrollIntoView({block: 'center', inline: 'center'});
const len = hit.getTotalLength(), m = hit.getScreenCTM();
for (const t of [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.15, 0.85, 0.1, 0.9]) {
  const p = hit.getPointAtLength(t * len).matrixTransform(m);
  if (document.elementFromPoint(p.x, p.y) === hit) return [p.x, p.y];
}
return null;
"""


def click_edge(driver: Any, name: str) -> None:
    """Click the explorer's edge ``name`` where nothing else covers it (a real mouse click, not a script event).

    An edge is a thin curve, often vertical (zero-width box) and crossed by others, so the click
    goes to a point on the curve where the edge itself is the topmost element.
    """
    point = driver.execute_script(_FREE_POINT, f"hit:{name}")
    if point is None:
        raise AssertionError(f"edge {name} is covered everywhere along its curve")
    click_at(driver, point[0], point[1])


def click_at(driver: Any, x: float, y: float) -> None:
    """A real mouse click at viewport coordinates (x, y)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y)).click()
    actions.perform()


def run_intervention(driver: Any, node: str, op: str, value: str, positions: str) -> None:
    """Fill the explorer's intervene form with one edit, add it and press run (the result comes back later)."""
    for field, text in (("iv-node", node), ("iv-value", value), ("iv-positions", positions)):
        driver.find_element("id", field).send_keys(text)
    driver.execute_script(f"document.getElementById('iv-op').value = {op!r}")
    driver.find_element("id", "iv-add").click()
    driver.find_element("id", "iv-run").click()
