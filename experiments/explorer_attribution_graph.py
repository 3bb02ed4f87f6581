"""SmolLM2's IOI attribution graph in the explorer: how long each answer takes, and the README's screenshot.

    python experiments/explorer_attribution_graph.py [--threads 2]

Builds the attribution graph of the IOI prompt of experiments/smollm2_feature_circuits.py through
the transcoders at ~/.cache/acdc/transcoders/smollm2-sotu, serves it with
`acdc.explorer.AttributionExplorer` (acdc's own graph, so every threshold is an exact prune of the
whole graph) and times, in this process: the page's first view (circuit-tracer's thresholds
0.8 / 0.98), a view at other thresholds, and a click on a node (its heaviest inputs and outputs
over the full adjacency). Then headless Chromium opens the page, clicks the most influential
feature and saves experiments/results/explorer_attribution_smollm2.png. Writes the timings to
experiments/results/explorer_attribution_graph.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from smollm2_common import ROOT, load

sys.path.insert(0, str(ROOT))

import acdc  # noqa: E402
from acdc.explorer import AttributionExplorer, start  # noqa: E402
from acdc.loading import cache_dir  # noqa: E402
from tests.browser import chromium, missing  # noqa: E402


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def wait(driver, script: str, timeout: float = 120.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if driver.execute_script(script):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the page did not get to: {script}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    reason = missing()
    if reason:
        raise SystemExit(f"explorer_attribution_graph: {reason}")
    if not (args.transcoders / "config.json").exists():
        raise SystemExit(f"no transcoders at {args.transcoders}: run experiments/smollm2_transcoders.py first (or --transcoders DIR)")
    model, _ = load(args.threads)
    ts = acdc.load_transcoders(args.transcoders, model)
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    g, build = timed(lambda: acdc.attribution_graph(model, tokens, transcoders=ts, progress=False))
    ex = AttributionExplorer(g)
    rows = [("build the graph (acdc.attribution_graph)", build, f"{g.n_features:,} features, {g.n_nodes:,} nodes")]
    first, s = timed(ex.view, 0.8, 0.98)
    rows.append(("first view, thresholds 0.8 / 0.98 (influence computed once, then cached)", s,
                 f"{first['counts']['nodes']} nodes, {first['counts']['links']:,} links, {first['counts']['shown_links']:,} drawn"))
    for nt, et in ((0.6, 0.9), (0.9, 0.99)):
        v, s = timed(ex.view, nt, et)
        rows.append((f"view at {nt} / {et}", s, f"{v['counts']['nodes']} nodes, {v['counts']['links']:,} links"))
    best = min((n for n in first["nodes"] if n["type"] == "feature"), key=lambda n: n["influence"])
    d, s = timed(ex.node, best["id"])
    rows.append((f"click on {best['id']} (heaviest inputs and outputs of the whole adjacency)", s,
                 f"top input {d['inputs'][0]['name']} ({d['inputs'][0]['weight']:.3f})"))

    server = start(ex)
    driver = chromium(1500, 950)
    shot = args.out / "explorer_attribution_smollm2.png"
    try:
        t0 = time.perf_counter()
        driver.get(server.url)
        wait(driver, "return document.body.dataset.state === 'ready'")
        rows.append(("page opened in Chromium and drawn (request + drawing)", time.perf_counter() - t0, ""))
        driver.execute_script(f"const e = document.getElementById('node:{best['id']}'); e.scrollIntoView({{block: 'center', inline: 'center'}});"
                              "e.dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        wait(driver, f"return document.getElementById('node-panel').dataset.node === '{best['id']}'")
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    lines = ["# SmolLM2's IOI attribution graph in the explorer", "",
             f"`python experiments/explorer_attribution_graph.py --threads {args.threads}`; prompt "
             f"{''.join(g.token_strs)!r}, transcoders {args.transcoders.name}. Times on this CPU, one process.", "",
             "| step | seconds | what |", "|---|---|---|"]
    lines += [f"| {what} | {sec:.2f} | {detail} |" for what, sec, detail in rows]
    lines += ["", f"Screenshot: `{shot.name}` (the most influential feature, {best['id']}, clicked)."]
    (args.out / "explorer_attribution_graph.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
