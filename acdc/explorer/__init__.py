"""The explorer: a circuit in the browser, its edges ablated live by the patching engine.

    acdc explore out/circuit.json --model zoo:ioi          # serve on http://127.0.0.1:8765/
    acdc export-html out/circuit.json -o circuit.html      # one self-contained page to share
    acdc explore-graph out/graph                           # an attribution graph (or circuit-tracer JSON)

From Python: ``acdc.explorer.start(acdc.explorer.Explorer(model, task, circuit))`` serves in a
background thread and returns the server (``.url``, ``.shutdown()``). `Explorer` answers the
page's requests (and can be called directly); `server` holds the HTTP routes; `page` the page.
"""

from .attribution import AttributionExplorer
from .page import attribution_page_html, export_html, page_html
from .server import ExplorerServer, serve, start
from .session import Explorer, ExplorerError, view_data

__all__ = ["AttributionExplorer", "attribution_page_html", "Explorer", "ExplorerError", "ExplorerServer", "export_html", "page_html", "serve", "start", "view_data"]
