"""The README's screenshots of the explorer, one per view, on the zoo's mini-IOI circuit.

    python experiments/explorer_screenshot.py      # -> experiments/results/explorer_*.png

Discovers the planted circuit with ACDC (threshold 0.1), serves it with `acdc.explorer.start`, and
drives headless Chromium (Debian's chromium + chromium-driver, via Selenium) through each view:

- explorer_mini_ioi.png: the circuit with the name mover's query edge ablated and its attention opened;
- explorer_why.png: "why A and not B" on prompt 0, and the trace of the top node;
- explorer_attend.png: why the name mover attends to the indirect object (a clicked pattern cell);
- explorer_fire.png: what makes the name mover fire over the task's prompts;
- explorer_intervene.png: the name mover scaled to 0 at the last position, and the answer's change.

The attribution-graph view's screenshot comes from experiments/explorer_attribution_graph.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import acdc  # noqa: E402
from acdc.explorer import Explorer, start  # noqa: E402
from tests.browser import chromium, click_edge, missing, run_intervention  # noqa: E402

OUT = ROOT / "experiments" / "results"


def wait(driver, script: str, timeout: float = 60.0) -> None:
    """Until ``script`` (JavaScript) returns something true and no request is in flight."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if driver.execute_script(f"return document.body.dataset.busy === '0' && !!(() => {{ {script} }})()"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the page did not settle on: {script}")


def shot(driver, element: str, name: str) -> None:
    driver.execute_script(f"document.getElementById('{element}').scrollIntoView({{block: 'start'}})")
    path = OUT / name
    if element == "page":
        driver.save_screenshot(str(path))
    else:
        driver.find_element("id", element).screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    reason = missing()
    if reason:
        raise SystemExit(f"explorer_screenshot: {reason}")
    entry = acdc.zoo.load("ioi")
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    server = start(Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer))
    driver = chromium(1500, 1020)
    OUT.mkdir(parents=True, exist_ok=True)
    last = int(entry.task.answer_pos[0])
    try:
        driver.get(server.url)
        wait(driver, "return document.body.dataset.state === 'ready' && Number(document.getElementById('metric-value').dataset.evals || 0) >= 1")
        click_edge(driver, "a1.h0->a2.h0<q>")
        wait(driver, "return Number(document.getElementById('metric-value').dataset.evals || 0) >= 2")
        driver.find_element("id", "mode-inspect").click()
        driver.find_element("css selector", '[data-node="a2.h0"] .shape').click()
        wait(driver, "return document.getElementById('attention-clean-svg')")
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(OUT / "explorer_mini_ioi.png"))
        print(f"wrote {OUT / 'explorer_mini_ioi.png'}")

        # why does the name mover attend to the indirect object? (key 2: the first name)
        driver.execute_script(f"document.querySelector('#attention-clean-svg rect.cell[data-q=\"{last}\"][data-k=\"2\"]')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        wait(driver, "return document.querySelectorAll('#attend-table tr[data-node]').length > 0")
        shot(driver, "inspector", "explorer_attend.png")

        driver.find_element("id", "fire-go").click()
        wait(driver, "return document.querySelectorAll('#fire-contexts tr[data-value]').length > 0")
        shot(driver, "fire-view", "explorer_fire.png")

        driver.find_element("id", "why-go").click()
        wait(driver, "return document.querySelectorAll('#why-table tr[data-why]').length > 0 && "
                     "!document.getElementById('why-table').textContent.includes('…')")
        driver.find_element("css selector", "#why-table tr[data-why]").click()
        wait(driver, "return document.getElementById('why-trace').textContent.length > 0")
        shot(driver, "why-panel", "explorer_why.png")

        run_intervention(driver, "a2.h0", "scale", "0", str(last))
        wait(driver, "return document.getElementById('iv-result').dataset.metric !== undefined")
        shot(driver, "intervene-panel", "explorer_intervene.png")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
