"""The README's screenshot of the explorer: the zoo's mini-IOI circuit, one edge ablated, a head opened.

    python experiments/explorer_screenshot.py      # -> experiments/results/explorer_mini_ioi.png

Discovers the planted circuit with ACDC (threshold 0.1), serves it with `acdc.explorer.start`,
and drives headless Chromium (Debian's chromium + chromium-driver, via Selenium): ablates the
name mover's value edge, switches to inspect mode and opens the name mover's attention view.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import acdc  # noqa: E402
from acdc.explorer import Explorer, start  # noqa: E402
from tests.browser import chromium, click_edge, missing  # noqa: E402

OUT = ROOT / "experiments" / "results" / "explorer_mini_ioi.png"


def wait_idle(driver, evals: int | None = None, timeout: float = 30.0) -> None:
    """Until the page is drawn, no request is in flight, and (if given) ``evals`` evaluations came back."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        ok = driver.execute_script("return document.body.dataset.state === 'ready' && document.body.dataset.busy === '0'")
        done = evals is None or driver.execute_script("return Number(document.getElementById('metric-value').dataset.evals || 0)") >= evals
        if ok and done:
            return
        time.sleep(0.05)
    raise TimeoutError("the page did not settle")


def main() -> None:
    reason = missing()
    if reason:
        raise SystemExit(f"explorer_screenshot: {reason}")
    entry = acdc.zoo.load("ioi")
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    server = start(Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer))
    driver = chromium(1500, 1020)
    try:
        driver.get(server.url)
        wait_idle(driver, 1)
        click_edge(driver, "a1.h0->a2.h0<q>")
        wait_idle(driver, 2)
        driver.find_element("id", "mode-inspect").click()
        driver.find_element("css selector", '[data-node="a2.h0"] .shape').click()
        t0 = time.perf_counter()
        while not driver.find_elements("id", "attention-clean-svg") and time.perf_counter() - t0 < 30:
            time.sleep(0.05)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(OUT))
        print(f"wrote {OUT}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
