"""The explorer page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Each check reads what the page shows and compares it with the engine computed here, in Python:
the metric after a click equals `Patcher.logits` of the same kept set, the attention heat map has
the head's pattern, a saved note lands in the JSON file. Without a browser the tests skip with
one line; with ``ACDC_REQUIRE_BROWSER=1`` (CI sets it) they fail instead.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from browser import chromium, click_at, click_edge, missing, run_intervention

import acdc
from acdc.api import prepare
from acdc.circuit import Circuit
from acdc.explorer import Explorer, export_html, start


@pytest.fixture(scope="module")
def driver():
    reason = missing()
    if reason:
        if os.environ.get("ACDC_REQUIRE_BROWSER"):
            pytest.fail(f"browser tests need a headless Chromium: {reason}")
        pytest.skip(reason)
    d = chromium(1400, 900)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def mini_ioi(tmp_path_factory):
    entry = acdc.zoo.load("ioi")
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    path = circuit.to_json(tmp_path_factory.mktemp("explorer") / "circuit.json")
    server = start(Explorer(entry.model, entry.task, Circuit.from_json(path), tokenizer=entry.tokenizer, path=path))
    yield entry, circuit, server, path
    server.shutdown()
    server.server_close()


def _engine_metric(entry, kept: list[str], graph=None, transcoders=None) -> float:
    p, m, batch = prepare(entry.model, entry.task, graph=graph, transcoders=transcoders)
    return m(p.logits(~p.graph.edge_mask(kept)), batch)


def _wait(driver, script: str, timeout: float = 60.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    errors = driver.execute_script("return document.getElementById('error').textContent")
    raise AssertionError(f"timed out waiting for: {script} (page error: {errors!r})")


def _settled(driver, evals: int) -> float:
    """Wait until ``evals`` evaluations came back and nothing is in flight; the metric shown (exact value)."""
    _wait(driver, "return document.body.dataset.state === 'ready' && document.body.dataset.busy === '0' && "
                  f"Number(document.getElementById('metric-value').dataset.evals || 0) >= {evals}")
    return float(driver.find_element("id", "metric-value").get_attribute("data-value"))


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, "return document.body.dataset.state === 'ready'")


def _fresh(driver, server) -> float:
    """Load the live page and wait for its first evaluation; the metric it shows."""
    _open(driver, server.url)
    return _settled(driver, 1)


def _inspect(driver, server, node: str) -> None:
    """A fresh page in inspect mode with ``node`` selected."""
    _fresh(driver, server)
    driver.find_element("id", "mode-inspect").click()
    driver.find_element("css selector", f'[data-node="{node}"] .shape').click()


def test_page_draws_the_circuit_with_the_engines_metric(driver, mini_ioi):
    entry, circuit, server, _ = mini_ioi
    shown = _fresh(driver, server)
    assert shown == pytest.approx(_engine_metric(entry, circuit.edges), abs=1e-9)
    drawn = driver.execute_script("return [...document.querySelectorAll('path.edge')].map(p => p.id.slice(5))")
    assert sorted(drawn) == sorted(circuit.edges)
    nodes = driver.execute_script("return [...document.querySelectorAll('g.node')].map(g => g.dataset.node)")
    assert sorted(nodes) == sorted(circuit.nodes)
    # layers bottom-up: input below the first layer's head, logits on top
    y = {n: driver.execute_script(f"return document.getElementById('node:{n}').getBoundingClientRect().y") for n in ("input", "a0.h0", "logits")}
    assert y["input"] > y["a0.h0"] > y["logits"]
    assert driver.find_element("id", "kept-count").text == f"{circuit.n_edges} of {circuit.n_edges} circuit edges"


def test_clicking_an_edge_ablates_it_and_the_metric_follows_the_engine(driver, mini_ioi):
    entry, circuit, server, _ = mini_ioi
    full = _fresh(driver, server)
    edge = "a1.h0->a2.h0<q>"
    click_edge(driver, edge)
    shown = _settled(driver, 2)
    kept = [e for e in circuit.edges if e != edge]
    assert shown == pytest.approx(_engine_metric(entry, kept), abs=1e-9) and abs(shown - full) > 1.0
    assert "ablated" in driver.find_element("id", f"edge:{edge}").get_attribute("class")
    assert driver.find_element("id", "metric-value").get_attribute("data-n-kept") == str(len(kept))
    bars = driver.execute_script("return document.querySelectorAll('#histogram rect.bar').length")
    assert bars == 30
    click_edge(driver, edge)  # restore
    assert _settled(driver, 3) == pytest.approx(full, abs=1e-9)


def test_why_a_and_not_b_shows_the_engines_effects_and_traces(driver, mini_ioi):
    """The "why" panel: every node's direct and total effect as the engine (checked against the hooked
    forward in test_explorer_why) gives them; a click on a row traces what feeds that node."""
    entry, circuit, server, _ = mini_ioi
    ex = server.explorer
    _fresh(driver, server)
    driver.execute_script("document.getElementById('prompt').value = '2'; document.getElementById('prompt').dispatchEvent(new Event('change'))")
    driver.find_element("id", "why-go").click()
    _wait(driver, "return document.querySelectorAll('#why-table tbody tr').length > 0 && document.body.dataset.busy === '0'")
    want = ex.why(2)
    rows = driver.execute_script("return [...document.querySelectorAll('#why-table tbody tr')].map(r => "
                                 "[r.dataset.why, Number(r.dataset.direct), r.dataset.total === '' ? null : Number(r.dataset.total)])")
    assert [r[0] for r in rows] == [n["name"] for n in want["nodes"]]
    for (_, direct, total), n in zip(rows, want["nodes"], strict=True):
        assert direct == pytest.approx(n["direct"], abs=1e-9) and total == pytest.approx(n["total"], abs=1e-9)
    assert driver.find_element("id", "why-a").get_attribute("value") == entry.tokenizer.decode([int(entry.task.correct[2])])
    driver.find_element("css selector", '#why-table tr[data-why="a2.h0"]').click()
    _wait(driver, "return document.querySelectorAll('#why-trace tr').length > 0 && document.body.dataset.busy === '0'")
    traced = driver.execute_script("return [...document.querySelectorAll('#why-trace tr')].map(r => [r.dataset.edge, Number(r.dataset.effect)])")
    t = ex.trace("a2.h0", 2)
    assert traced[0][0] == t["edges"][0]["edge"] and traced[0][1] == pytest.approx(t["edges"][0]["effect"], abs=1e-9)
    assert "a1.h0->a2.h0<q>" in [e for e, _ in traced[:3]]
    driver.find_element("id", "why-a").clear()
    driver.find_element("id", "why-a").send_keys("two words")
    driver.find_element("id", "why-go").click()
    _wait(driver, "return document.getElementById('error').textContent.includes('tokens here')")


def test_clicking_a_node_ablates_its_output(driver, mini_ioi):
    entry, circuit, server, _ = mini_ioi
    _fresh(driver, server)
    driver.find_element("css selector", '[data-node="a1.h0"] .shape').click()
    shown = _settled(driver, 2)
    kept = [e for e in circuit.edges if not e.startswith("a1.h0->")]
    assert shown == pytest.approx(_engine_metric(entry, kept), abs=1e-9)
    assert "ablated" in driver.find_element("id", "node:a1.h0").get_attribute("class")


def test_a_heads_attention_view_and_direct_effect(driver, mini_ioi):
    entry, _, server, _ = mini_ioi
    _inspect(driver, server, "a2.h0")
    _wait(driver, "return document.querySelectorAll('#attention-clean-svg rect.cell').length > 0")
    n = int(entry.task.answer_pos[0]) + 1
    cells = driver.execute_script("return [...document.querySelectorAll('#attention-clean-svg rect.cell')].map(r => Number(r.dataset.p))")
    _, cache = entry.model.run_with_cache(entry.task.clean[0:1])
    want = cache["blocks.2.attn.hook_pattern"][0, 0, :n, :n].reshape(-1)
    assert torch.allclose(torch.tensor(cells), want, atol=1e-4)
    assert driver.execute_script("return document.querySelectorAll('#attention-corrupt-svg rect.cell').length") == n * n
    change = float(_wait(driver, "return document.getElementById('direct-effect').dataset.change"))
    p, m, batch = prepare(entry.model, entry.task)
    assert change == pytest.approx(m(p.logits(["a2.h0->logits"]), batch) - m(p.clean.logits, batch), abs=1e-6)
    assert _settled(driver, 1) == pytest.approx(_engine_metric(entry, mini_ioi[1].edges), abs=1e-9)  # inspecting ablates nothing


def test_what_makes_a_head_fire_on_the_page(driver, mini_ioi):
    """The scan's contexts, histogram and promoted tokens on the page are the engine's (`Explorer.fire`,
    checked against the hooked forward in test_explorer and test_firing)."""
    entry, _, server, _ = mini_ioi
    _inspect(driver, server, "a2.h0")
    driver.find_element("id", "fire-go").click()
    _wait(driver, "return document.querySelectorAll('#fire-contexts tr[data-value]').length > 0")
    want = server.explorer.fire("a2.h0")
    values = driver.execute_script("return [...document.querySelectorAll('#fire-contexts tr[data-value]')].map(r => Number(r.dataset.value))")
    assert values == pytest.approx([c["value"] for c in want["contexts"]], abs=1e-9)
    counts = driver.execute_script("return [...document.querySelectorAll('#fire-histogram rect.bar')].map(r => Number(r.dataset.count))")
    assert counts == want["histogram"]["counts"]
    promotes = driver.find_element("id", "fire-promotes").text
    assert promotes.startswith("promotes: " + json.dumps(want["promotes"][0][0]))
    assert f"q {want['contexts'][0]['position']}" in driver.find_element("id", "fire-contexts").text


def test_clicking_a_pattern_cell_splits_the_attention_score(driver, mini_ioi):
    """Why a2.h0 attends to a token: the split the page shows is the engine's (checked against the hooked
    forward in test_explorer_why), and each column sums to the score."""
    entry, _, server, _ = mini_ioi
    _inspect(driver, server, "a2.h0")
    _wait(driver, "return document.querySelectorAll('#attention-clean-svg rect.cell').length > 0")
    q = int(entry.task.answer_pos[0])
    driver.execute_script(f"document.querySelector('#attention-clean-svg rect.cell[data-q=\"{q}\"][data-k=\"2\"]')"
                          ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    _wait(driver, "return document.querySelectorAll('#attend-table tr[data-node]').length > 0")
    want = server.explorer.attend("a2.h0", 2, prompt=0, query=q)
    assert float(driver.find_element("id", "attend-why").get_attribute("data-score")) == pytest.approx(want["score"], abs=1e-9)
    rows = driver.execute_script("return [...document.querySelectorAll('#attend-table tr[data-node]')].map(r => "
                                 "[r.dataset.node, Number(r.dataset.query), Number(r.dataset.key)])")
    assert [r[0] for r in rows] == [n["name"] for n in want["nodes"]][:30]
    assert sum(r[1] for r in rows) == pytest.approx(want["score"], abs=1e-6) == pytest.approx(sum(r[2] for r in rows), abs=1e-6)


def test_intervening_on_the_page_runs_the_engine_and_saves_the_list(driver, mini_ioi):
    entry, _, server, path = mini_ioi
    _fresh(driver, server)
    q = int(entry.task.answer_pos[0])
    run_intervention(driver, "a1.h0", "scale", "0", str(q))
    _wait(driver, "return document.getElementById('iv-result').dataset.metric !== undefined && document.body.dataset.busy === '0'")
    edits = [{"node": "a1.h0", "op": "scale", "value": 0.0, "positions": [q]}]
    want = server.explorer.intervene(edits, prompt=0)
    shown = float(driver.find_element("id", "iv-result").get_attribute("data-metric"))
    assert shown == pytest.approx(want["metric"], abs=1e-9) and want["change"] < -1
    driver.find_element("id", "iv-save").click()
    _wait(driver, "return document.getElementById('iv-status').textContent.startsWith('saved')")
    assert Circuit.from_json(path).interventions == edits
    server.explorer.save_interventions([])


def test_prompt_choice_updates_tokens_and_next_tokens(driver, mini_ioi):
    entry, _, server, _ = mini_ioi
    _fresh(driver, server)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "prompt")).select_by_value("7")
    _settled(driver, 2)
    words = entry.tokenizer.decode(entry.task.clean[7]).split()
    assert driver.execute_script("return [...document.querySelectorAll('#clean-tokens .tok')].map(t => t.textContent)") == words
    top = entry.tokenizer.decode([int(prepare(entry.model, entry.task)[0].clean.logits[7].argmax())])
    assert driver.find_element("css selector", "#next-tokens tbody tr td").text.startswith(f'"{top}"')


def test_notes_are_saved_from_the_page(driver, mini_ioi):
    _, _, server, path = mini_ioi
    _inspect(driver, server, "a0.h0")
    driver.find_element("id", "note-label").send_keys("duplicate token")
    driver.find_element("id", "note-text").send_keys("attends to the earlier copy of S")
    driver.find_element("id", "note-save").click()
    _wait(driver, "return document.getElementById('note-status').textContent.startsWith('saved')")
    assert Circuit.from_json(path).notes == {"a0.h0": {"label": "duplicate token", "note": "attends to the earlier copy of S"}}
    assert driver.find_element("id", "label:a0.h0").text == "duplicate token"


def test_node_table_measures_effects(driver, mini_ioi):
    entry, circuit, server, _ = mini_ioi
    _fresh(driver, server)
    driver.find_element("id", "measure").click()
    _wait(driver, "return document.querySelector('#node-table tbody tr td:nth-child(6)').textContent !== ''")
    first = driver.find_element("css selector", "#node-table tbody tr").get_attribute("data-node")
    assert first in ("a0.h0", "a1.h0")  # the two whose removal costs the most (tied), see test_explorer


def test_static_export_opens_from_disk(driver, mini_ioi, tmp_path):
    _, circuit, _, _ = mini_ioi
    c = Circuit.from_dict(circuit.to_dict())
    c.notes = {"a2.h0": {"label": "mover </script><b>x</b>"}}
    page = export_html(c, tmp_path / "page.html")
    _open(driver, page.as_uri())
    assert "Static export" in driver.find_element("id", "banner").text
    assert driver.execute_script("return document.querySelectorAll('path.edge').length") == circuit.n_edges
    assert driver.find_element("id", "label:a2.h0").text == "mover </script><b>x</b>"
    click_edge(driver, "a1.h0->a2.h0<q>")  # inspects; nothing to ablate without a model
    assert "ablated" not in driver.find_element("id", "edge:a1.h0->a2.h0<q>").get_attribute("class")
    assert "a1.h0->a2.h0<q>" in driver.find_element("id", "inspect-body").text


def test_positional_circuit_page(driver, mini_ioi):
    entry = mini_ioi[0]
    circuit = acdc.discover(entry.model, entry.task, threshold=0.05, positions="named", progress=False)
    server = start(Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer))
    try:
        _fresh(driver, server)
        edge = circuit.edges[0]
        click_edge(driver, edge)
        shown = _settled(driver, 2)
        assert shown == pytest.approx(_engine_metric(entry, circuit.edges[1:], graph=circuit.graph), abs=1e-9)
        columns = driver.execute_script("return [...document.querySelectorAll('text.collabel[font-weight]')].map(t => t.textContent)")
        assert set(columns) == set(circuit.graph.positions)
        # the S-inhibition head only reads keys/values at S2: clicking it there ablates those inputs
        reads = [e for e in circuit.edges if e.startswith("a0.h0->a1.h0<") and e.endswith("@S2")]
        assert len(reads) == 2
        driver.find_element("id", "mode-ablate").click()
        click_edge(driver, edge)  # restore the first edge
        _settled(driver, 3)
        driver.find_element("css selector", '[data-node="a1.h0@S2"] .shape').click()
        shown = _settled(driver, 4)
        kept = [e for e in circuit.edges if e not in reads]
        assert shown == pytest.approx(_engine_metric(entry, kept, graph=circuit.graph), abs=1e-9)
        # a trace runs on inside the head, from where it reads keys/values (S2) to where it acts (END)
        driver.find_element("id", "mode-inspect").click()
        driver.find_element("css selector", '[data-node="a1.h0@S2"] .shape').click()
        lit = set(driver.execute_script("return [...document.querySelectorAll('path.edge:not(.dim)')].map(p => p.id.slice(5))"))
        assert {"a1.h0->a2.h0<q>@END", "a2.h0->logits@END", *reads} <= lit
        assert "input->a2.h0<v>@IO" in circuit.edges and "input->a2.h0<v>@IO" not in lit  # the mover's value path
    finally:
        server.shutdown()
        server.server_close()


def test_a_thousand_edge_circuit_renders(driver, tmp_path):
    """A GPT-2-small-shaped circuit of 1,000 edges (the timing is in experiments/explorer_render_time.py)."""
    g = acdc.Graph(12, 12)
    gen = torch.Generator().manual_seed(0)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[torch.randperm(g.n_edges, generator=gen)[:1000]] = True
    c = Circuit(g, keep, torch.randn(g.n_edges, generator=gen, dtype=torch.float64))
    _open(driver, export_html(c, tmp_path / "big.html").as_uri())
    timing = driver.execute_script("return window.acdcTiming")
    assert timing["edges"] == 1000 and driver.execute_script("return document.querySelectorAll('path.hit').length") == 1000
    assert Path(tmp_path / "big.html").stat().st_size < 2_000_000


def test_a_deep_circuit_is_drawn_across_the_pane_with_readable_labels(driver, tmp_path):
    """A SmolLM2-shaped circuit (30 layers, 9 heads) of 100 edges fills the pane's width (the height scrolls); fitting
    the height too drew it in a column ~130 px wide with ~6 px labels. The page says it is loading until it is not."""
    g = acdc.Graph(30, 9)
    gen = torch.Generator().manual_seed(0)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[torch.randperm(g.n_edges, generator=gen)[:100]] = True
    c = Circuit(g, keep, torch.randn(g.n_edges, generator=gen, dtype=torch.float64))
    page = export_html(c, tmp_path / "deep.html")
    assert "loading the circuit" in page.read_text()  # what the header says before the page has drawn
    _open(driver, page.as_uri())
    width, pane = driver.execute_script("return [document.getElementById('graph').getBoundingClientRect().width, "
                                        "document.getElementById('graph-pane').clientWidth]")
    assert width >= 0.6 * pane, (width, pane)
    label = driver.execute_script("return Math.min(...[...document.querySelectorAll('text.rowlabel')]"
                                  ".map(t => t.getBoundingClientRect().height))")
    assert label >= 8, label
    assert "loading" not in driver.find_element("id", "title").text


def test_selecting_a_node_traces_its_paths(driver, mini_ioi):
    import networkx as nx

    _, circuit, server, _ = mini_ioi
    _inspect(driver, server, "a0.h0")
    dimmed = set(driver.execute_script("return [...document.querySelectorAll('path.edge.dim')].map(p => p.id.slice(5))"))
    g = circuit.to_networkx(multi=True)
    up, down = nx.ancestors(g, "a0.h0") | {"a0.h0"}, nx.descendants(g, "a0.h0") | {"a0.h0"}
    on_path = {d["name"] for u, v, d in g.edges(data=True) if {u, v} <= up or {u, v} <= down}
    assert dimmed == set(circuit.edges) - on_path and dimmed and on_path
    x, y = driver.execute_script("const r = document.getElementById('graph').getBoundingClientRect(); return [r.right - 8, r.top + 8]")
    assert driver.execute_script(f"return document.elementFromPoint({x}, {y}).id") == "graph"
    click_at(driver, x, y)  # the background clears the focus
    assert driver.execute_script("return document.querySelectorAll('path.edge.dim').length") == 0


def test_a_histogram_bar_shows_one_of_its_prompts(driver, mini_ioi):
    entry, _, server, _ = mini_ioi
    _fresh(driver, server)
    bars = driver.execute_script("return [...document.querySelectorAll('#histogram rect.bar')].map(r => r.dataset.prompt)")
    target = next(b for b in reversed(bars) if b not in ("", "0"))
    driver.execute_script(f"document.querySelectorAll('#histogram rect.bar')[{bars.index(target)}]"
                          ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    _settled(driver, 2)
    assert driver.find_element("id", "prompt").get_attribute("value") == target
    words = entry.tokenizer.decode(entry.task.clean[int(target)]).split()
    assert driver.execute_script("return [...document.querySelectorAll('#clean-tokens .tok')].map(t => t.textContent)") == words


@pytest.fixture(scope="module")
def attribution(tmp_path_factory):
    """A tiny GPT-2's attribution graph through random transcoders, saved, behind the explorer."""
    from conftest import tiny_gpt2
    from test_features import random_set

    from acdc.algorithms.attribution_graph import build_attribution_graph
    from acdc.explorer import AttributionExplorer
    from acdc.model import Transformer

    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    ts = random_set(model, (0, 1, 2), "relu", True)
    g = build_attribution_graph(Transformer.from_bridge(model), torch.tensor([3, 7, 1, 9, 4, 4, 2]), ts, batch_size=16)
    path = g.save(tmp_path_factory.mktemp("attribution") / "graph")
    server = start(AttributionExplorer.open(path))
    yield g, server, path
    server.shutdown()
    server.server_close()


def _loads(driver, n: int) -> None:
    _wait(driver, f"return document.body.dataset.state === 'ready' && Number(document.body.dataset.loads || 0) >= {n}")


def test_an_attribution_graph_opens_pruned_and_its_sliders_prune_again(driver, attribution):
    g, server, _ = attribution
    driver.get(server.url)
    _loads(driver, 1)
    drawn = driver.execute_script("return [...document.querySelectorAll('g.node')].map(e => e.id.slice(5))")
    kept = g.prune(0.8, 0.98)
    assert sorted(drawn) == sorted(g.node_name(i) for i in kept.node_mask.nonzero().squeeze(1).tolist())
    assert driver.execute_script("return document.querySelectorAll('line.link').length") == kept.n_edges
    # rows: tokens at the bottom, logits on top
    y = {kind: driver.execute_script(f"return document.querySelector('g.node[id^=\"node:{kind}\"]').getBoundingClientRect().y")
         for kind in ("input", "m0", "logit")}
    assert y["input"] > y["m0"] > y["logit"]
    driver.execute_script("const s = document.getElementById('node-threshold'); s.value = '0.4';"
                          "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    _loads(driver, 2)
    fewer = g.prune(0.4, 0.98)
    assert driver.execute_script("return document.querySelectorAll('g.node').length") == fewer.n_nodes < kept.n_nodes
    assert f"{fewer.n_nodes} of {g.n_nodes} nodes" in driver.find_element("id", "counts").text


def test_clicking_a_node_lists_its_adjacency_and_saves_its_label(driver, attribution):
    from acdc.attribution_graphs import AttributionGraph

    g, server, path = attribution
    driver.get(server.url)
    _loads(driver, 1)
    name = driver.execute_script("return [...document.querySelectorAll('g.node')].map(e => e.id.slice(5)).find(n => /^m1\\.f/.test(n))")
    box = driver.execute_script(f"const r = document.getElementById('node:{name}').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]")
    click_at(driver, *box)
    _wait(driver, f"return document.getElementById('node-panel').dataset.node === '{name}'")
    rows = driver.execute_script("return [...document.querySelectorAll('#inputs tr')].map(r => [r.dataset.id, Number(r.dataset.weight)])")
    assert rows and all(w == pytest.approx(g.edge(src, name), abs=1e-6) for src, w in rows)
    assert abs(rows[0][1]) == pytest.approx(float(g.adjacency[g.node_index(name)].abs().max()), abs=1e-6)
    driver.find_element("id", "label").send_keys("promotes a name")
    driver.find_element("id", "save-label").click()
    _wait(driver, "return Number(document.getElementById('saved').dataset.saved || 0) >= 1")
    assert AttributionGraph.load(path).labels == {name: "promotes a name"}
    assert "promotes a name" in driver.execute_script(f"return document.getElementById('node:{name}').textContent")


def test_pinning_grouping_and_suggested_groups_on_the_page(driver, attribution):
    """A node pinned on the page is drawn at any threshold and saved; two shift-clicked nodes grouped become a
    supernode in the saved graph, drawn around them; suggested groups are the engine's and accepting one saves it."""
    from acdc.attribution_graphs import AttributionGraph
    from acdc.explorer import AttributionExplorer

    g, server, path = attribution
    driver.get(server.url)
    _loads(driver, 1)
    names = driver.execute_script("return [...document.querySelectorAll('g.node')].map(e => e.id.slice(5)).filter(n => /^m\\d\\.f/.test(n))")
    assert len(names) >= 3
    driver.execute_script(f"document.getElementById('node:{names[0]}').dispatchEvent(new MouseEvent('click', {{bubbles: true}}))")
    _wait(driver, f"return document.getElementById('node-panel').dataset.node === '{names[0]}'")
    driver.find_element("id", "pin").click()
    _loads(driver, 2)
    assert AttributionGraph.load(path).pinned == [names[0]]
    for name in names[1:3]:
        driver.execute_script(f"document.getElementById('node:{name}').dispatchEvent(new MouseEvent('click', {{bubbles: true, shiftKey: true}}))")
    assert driver.find_element("id", "chosen-count").text == "(2 chosen)"
    driver.find_element("id", "group-label").send_keys("two features")
    driver.find_element("id", "group-go").click()
    _loads(driver, 3)
    assert AttributionGraph.load(path).supernodes == [["two features", *names[1:3]]]
    driver.execute_script("const s = document.getElementById('node-threshold'); s.value = '0';"
                          "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    _loads(driver, 4)  # at threshold 0 the pinned and grouped nodes are still drawn
    assert driver.execute_script(f"return document.getElementById('node:{names[0]}').querySelector('circle.pin') !== null")
    assert driver.execute_script("return document.querySelector('g.supernode').dataset.members") == "2"
    driver.execute_script("document.getElementById('suggest-threshold').value = '0'")
    driver.find_element("id", "suggest-go").click()
    _wait(driver, "return document.getElementById('suggestions').dataset.count !== undefined")
    want = AttributionExplorer(AttributionGraph.load(path)).suggest_groups(0.0, 0.0, 0.98)["groups"]
    rows = driver.execute_script("return [...document.querySelectorAll('#suggestions tr[data-ids]')].map(r => r.dataset.ids.split(' '))")
    assert rows == [x["ids"] for x in want] and rows
    driver.find_element("css selector", "#suggestions tr[data-ids] button").click()
    _loads(driver, 5)
    assert AttributionGraph.load(path).supernodes[1] == ["group 2", *rows[0]]
    driver.find_element("id", "merge").click()  # each supernode drawn as one node, its links summed
    _loads(driver, 6)
    drawn = set(driver.execute_script("return [...document.querySelectorAll('g.node')].map(e => e.id.slice(5))"))
    want = server.explorer.view(0.0, 0.98, merge=True)  # a node in two groups goes to the first
    assert drawn == {n["id"] for n in want["nodes"]} and "group:0" in drawn and not drawn & set(names[1:3])
    assert driver.execute_script("return document.querySelectorAll('line.link').length") == len(want["links"])
    driver.find_element("id", "merge").click()
    _loads(driver, 7)
    server.explorer.save_groups(pinned=[], supernodes=[])  # the module's other tests see the graph as it was


def test_a_feature_circuit_page(driver):
    """The zoo's feature circuit in the live page: its features drawn, an edge click re-measured by the engine."""
    entry = acdc.zoo.load("feature-chain")
    circuit = acdc.discover(entry.model, entry.task, graph=entry.graph, transcoders=entry.transcoders, threshold=0.01, progress=False)
    server = start(Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer, transcoders=entry.transcoders))
    try:
        shown = _fresh(driver, server)
        assert shown == pytest.approx(_engine_metric(entry, circuit.edges, graph=entry.graph, transcoders=entry.transcoders), abs=1e-9)
        nodes = driver.execute_script("return [...document.querySelectorAll('g.node')].map(g => g.dataset.node)")
        assert {"m0.f0", "m1.f0", "a1.h0"} <= set(nodes)
        click_edge(driver, "m0.f0->a1.h0<v>")
        after = _settled(driver, 2)
        kept = [e for e in circuit.edges if e != "m0.f0->a1.h0<v>"]
        assert after == pytest.approx(_engine_metric(entry, kept, graph=entry.graph, transcoders=entry.transcoders), abs=1e-9) and after != shown
        # what makes m1.f0 fire: the planted class-0 reader fires at "is" and promotes the class's answer
        driver.find_element("id", "mode-inspect").click()
        driver.find_element("css selector", '[data-node="m1.f0"] .shape').click()
        driver.find_element("id", "fire-go").click()
        _wait(driver, "return document.querySelectorAll('#fire-contexts tr[data-value]').length > 0")
        values = driver.execute_script("return [...document.querySelectorAll('#fire-contexts tr[data-value]')].map(r => Number(r.dataset.value))")
        want = server.explorer.fire("m1.f0")
        assert values == pytest.approx([c["value"] for c in want["contexts"]], abs=1e-9) and values[0] > 0
        assert {c["token"] for c in want["contexts"]} == {"is"} and want["promotes"][0][0] == "class0"
        assert driver.find_element("id", "fire-promotes").text.startswith('promotes: "class0"')
        # ablating a class feature on the page: the engine's KL, far from the full model's 0
        run_intervention(driver, "m0.f0", "ablate", "", "")
        _wait(driver, "return document.getElementById('iv-result').dataset.metric !== undefined && document.body.dataset.busy === '0'")
        got = float(driver.find_element("id", "iv-result").get_attribute("data-metric"))
        assert got == pytest.approx(server.explorer.intervene([{"node": "m0.f0"}])["metric"], abs=1e-9) and got > 0.5
    finally:
        server.shutdown()
        server.server_close()


def test_generate_on_the_page_shows_the_edited_continuation(driver):
    """The intervene panel's generate button: the continuation it shows is the explorer's (`Explorer.generate`, checked
    against `acdc.generate` in test_explorer)."""
    import json

    from test_features import feature_explorer

    ex = feature_explorer()[0]
    server = start(ex)
    try:
        _fresh(driver, server)
        run_intervention(driver, "m0.f3", "clamp", "6", "")
        _wait(driver, "return document.getElementById('iv-result').dataset.metric !== undefined && document.body.dataset.busy === '0'")
        driver.find_element("id", "iv-generate").click()
        _wait(driver, "return document.getElementById('iv-generated-text') !== null && document.body.dataset.busy === '0'")
        want = ex.generate([{"node": "m0.f3", "op": "clamp", "value": 6.0}], prompt=0, max_new_tokens=20)
        assert driver.find_element("id", "iv-generated-text").text == "with the edits: " + json.dumps("".join(want["intervened"]))
    finally:
        server.shutdown()
        server.server_close()
