"""The README's screenshots of the explorer, one per view, on the zoo's mini-IOI circuit.

    python experiments/explorer_screenshot.py      # -> experiments/results/explorer_*.png

Discovers the planted circuit with ACDC (threshold 0.1), serves it with `acdc.explorer.start`, and
drives headless Chromium (Debian's chromium + chromium-driver, via Selenium) through each view:

- explorer_mini_ioi.png: the circuit with the name mover's query edge ablated and its attention opened;
- explorer_why.png: "why A and not B" on prompt 0, and the trace of the top node;
- explorer_attend.png: why the name mover attends to the indirect object (a clicked pattern cell);
- explorer_fire.png: what makes the name mover fire over the task's prompts;
- explorer_intervene.png: the name mover scaled to 0 at the last position, and the answer's change;
- explorer_attribution_groups.png: the feature-chain zoo model's attribution graph of its first prompt,
  its class feature of m0 pinned and the two class features of the prompt's class grouped into a supernode.

SmolLM2's attribution graph view comes from experiments/explorer_attribution_graph.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import acdc  # noqa: E402
from acdc.explorer import AttributionExplorer, Explorer, start  # noqa: E402
from tests.browser import chromium, click_edge, missing, run_intervention  # noqa: E402

OUT = ROOT / "experiments" / "results"


def wait(driver, script: str, timeout: float = 60.0, idle: bool = True) -> None:
    """Until ``script`` (JavaScript) returns something true and (``idle``) no request of the circuit page is in flight."""
    t0 = time.perf_counter()
    busy = "document.body.dataset.busy === '0' && " if idle else ""
    while time.perf_counter() - t0 < timeout:
        if driver.execute_script(f"return {busy}!!(() => {{ {script} }})()"):
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
        server.shutdown()
    try:
        attribution_view(driver)
    finally:
        driver.quit()


def attribution_view(driver) -> None:
    """The feature chain's attribution graph with a pin and a supernode (set from Python: the page draws them)."""
    chain = acdc.zoo.load("feature-chain")
    prompt = chain.task.clean[0, : int(chain.task.answer_pos[0]) + 1]
    graph = acdc.attribution_graph(chain.model, prompt, transcoders=chain.transcoders, progress=False)
    ex = AttributionExplorer(graph)
    shown = [n for n in ex.view()["nodes"] if n["type"] == "feature"]
    early = [n["id"] for n in shown if n["layer"] == 0]
    late = [n["id"] for n in shown if n["layer"] == 1]
    ex.save_groups(pinned=early[:1], supernodes=[["the item's class", *(early[:1] + late[:1])]] if early and late else [])
    server = start(ex)
    try:
        driver.set_window_size(1100, 760)
        driver.get(server.url)
        wait(driver, "return document.body.dataset.state === 'ready'", idle=False)
        driver.execute_script(f"document.getElementById('node:{early[0]}').dispatchEvent(new MouseEvent('click', {{bubbles: true}}))")
        wait(driver, f"return document.getElementById('node-panel').dataset.node === '{early[0]}'", idle=False)
        driver.save_screenshot(str(OUT / "explorer_attribution_groups.png"))
        print(f"wrote {OUT / 'explorer_attribution_groups.png'}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
