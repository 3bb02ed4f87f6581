"""The explorer's local web server: Python's standard library `http.server`, bound to 127.0.0.1.

Why the standard library: the page needs a dozen JSON routes and one static file; a framework
would add an install-time dependency and a second way to run the engine, and no feature here
needs one. Requests run one at a time through the engine (a lock; torch runs are not shared
between threads), so a second click waits for the first instead of racing it; a request's body
is read before it queues for the engine, so a slow client holds up only itself.

Routes (the README documents them):

    GET  /                      the page
    GET  /api/graph             the circuit JSON (EAP-IG/MIB format, scores and notes)
    GET  /api/view              what the page draws: layout, node table, prompts, metric baselines
    POST /api/evaluate          {"removed": [edges]} (the circuit minus these), {"kept": [edges]} (only these)
                                or {"ablated": [edges]} (the whole graph minus these); optional "prompt", "k"
    GET  /api/head?name=a1.h2&prompt=0   attention pattern (clean, corrupt) and direct effect
    POST /api/node_effects      {"kept": [edges]}: each node's output removed from that circuit
    POST /api/notes             {"node": "a1.h2", "label": "...", "note": "..."}: saved into the JSON
    POST /api/why               {"prompt": 0, "a": " Mary", "b": " John"} (tokens default to the prompt's answers;
                                "totals": how many nodes get a total effect): every node's direct and total
                                effect on logit(a) - logit(b)
    POST /api/why/trace         {"node": "a2.h0", "prompt": 0, "a": ..., "b": ...}: each edge into the node, ablated alone
    POST /api/attend            {"head": "a2.h0", "key": 2, "prompt": 0, "query": 12}: the attention score split over
                                upstream nodes (through query and key) and each one's ablation's effect on the pattern
    POST /api/intervene         {"interventions": [{"node": "a1.h0", "op": "scale", "value": 2, "positions": [4]}],
                                "prompt": 0}: the full model with them: metric, per prompt, next tokens
    POST /api/generate          {"interventions": [feature edits], "prompt": 0, "max_new_tokens": 20}: the prompt continued
                                greedily by the model and with the transcoder features edited at every step
    POST /api/interventions     {"interventions": [...]}: kept with the circuit, saved into its JSON
    POST /api/fire              {"node": "a2.h0", "top": 10}: what makes a head, MLP, neuron or feature fire over
                                the corpus: statistics, histogram, top contexts, promoted and suppressed tokens

An attribution graph (`AttributionExplorer`, ``acdc explore-graph``) has its own page and routes:

    GET  /api/attribution?node_threshold=0.8&edge_threshold=0.98&max_links=3000&merge=0   nodes and links kept
                                            (merge=1: each supernode one node, its links summed)
    GET  /api/attribution/node?id=3_17_5    a node's heaviest inputs and outputs
    POST /api/attribution/label             {"id": "3_17_5", "label": "..."}: saved into the file
    POST /api/attribution/groups            {"pinned": [ids], "supernodes": [[label, id, id, ...]]}: saved into the file
    GET  /api/attribution/suggest?threshold=0.9&node_threshold=0.8&edge_threshold=0.98   groups of features with alike effects

Bad requests get a 4xx status and ``{"error": "one line"}``; an unexpected failure a 500 with
one line (the traceback goes to the server's stderr). The server keeps running either way.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .attribution import AttributionExplorer
from .page import attribution_page_html, page_html
from .session import Explorer, ExplorerError

__all__ = ["ExplorerServer", "serve", "start", "MAX_BODY"]

MAX_BODY = 16 * 2**20  # bytes; a "kept" or "ablated" list of every edge of a 1M-edge graph fits


class ExplorerServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` that answers for one `Explorer` (engine calls serialised by a lock)."""

    daemon_threads = True

    def __init__(self, explorer: Explorer | AttributionExplorer, port: int = 0, *, quiet: bool = True,
                 max_body: int = MAX_BODY):
        self.explorer = explorer
        self.lock = threading.Lock()
        self.quiet = quiet
        self.max_body = max_body
        self.page = (attribution_page_html() if isinstance(explorer, AttributionExplorer) else page_html(None)).encode()
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer  # type: ignore[assignment]  # http.server types it as the base server
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle or trickle a body (it blocks only its own thread)

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def _get(self) -> Any:
        url = urlsplit(self.path)
        ex = self.server.explorer
        if url.path in ("/", "/index.html"):
            return self.server.page
        if url.path == "/favicon.ico":
            return b""
        if isinstance(ex, AttributionExplorer):
            return self._attribution_get(ex, url.path, parse_qs(url.query))
        if url.path == "/api/graph":
            with self.server.lock:
                return ex.circuit.to_dict()
        if url.path == "/api/view":
            with self.server.lock:
                return ex.view()
        if url.path == "/api/head":
            query = parse_qs(url.query)
            prompt = query.get("prompt", ["0"])[0]
            if not prompt.isdigit():
                raise _RequestError(HTTPStatus.BAD_REQUEST, f"prompt must be a prompt index, got {prompt!r}")
            with self.server.lock:
                return ex.head(query.get("name", [""])[0], int(prompt))
        if url.path in _POST_ROUTES:
            raise _RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{url.path} takes POST with a JSON body")
        raise _RequestError(HTTPStatus.NOT_FOUND, f"no such page {url.path!r}; the API is under /api/ (see the README)")

    def _attribution_get(self, ex: AttributionExplorer, path: str, query: dict[str, list[str]]) -> Any:
        if path in ("/api/attribution", "/api/attribution/suggest"):
            known = {"node_threshold", "edge_threshold", *(("max_links", "merge") if path == "/api/attribution" else ("threshold",))}
            extra = sorted(set(query) - known)
            if extra:
                raise _RequestError(HTTPStatus.BAD_REQUEST, f"unknown parameter {extra[0]!r}; it takes {', '.join(sorted(known))}")
            args: dict[str, Any] = {}
            for name in known & set(query):
                text = query[name][0]
                if name == "merge":
                    if text not in ("0", "1"):
                        raise _RequestError(HTTPStatus.BAD_REQUEST, f"merge must be 0 or 1, got {text!r}")
                    args[name] = text == "1"
                    continue
                try:
                    args[name] = int(text) if name == "max_links" else float(text)
                except ValueError:
                    raise _RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a number, got {text!r}") from None
            with self.server.lock:
                return ex.view(**args) if path == "/api/attribution" else ex.suggest_groups(**args)
        if path == "/api/attribution/node":
            with self.server.lock:
                return ex.node(query.get("id", [""])[0])
        if path in ("/api/attribution/label", "/api/attribution/groups"):
            raise _RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST with a JSON body")
        raise _RequestError(HTTPStatus.NOT_FOUND, f"no such page {path!r}; an attribution graph's API is "
                            "/api/attribution, /api/attribution/node, /api/attribution/suggest, /api/attribution/label "
                            "and /api/attribution/groups")

    def _post(self) -> Any:
        path = urlsplit(self.path).path
        ex = self.server.explorer
        if isinstance(ex, AttributionExplorer):
            fields = {"/api/attribution/label": {"id", "label"}, "/api/attribution/groups": {"pinned", "supernodes"}}
            if path not in fields:
                raise _RequestError(HTTPStatus.NOT_FOUND, f"no POST route {path!r}; an attribution graph takes POST "
                                    "/api/attribution/label and /api/attribution/groups")
            body = self._json_body()
            extra = sorted(set(body) - fields[path])
            if extra:
                raise _RequestError(HTTPStatus.BAD_REQUEST, f"unknown field {extra[0]!r}; it takes {', '.join(sorted(fields[path]))}")
            with self.server.lock:
                if path == "/api/attribution/groups":
                    return ex.save_groups(body.get("pinned"), body.get("supernodes"))
                return ex.save_label(body.get("id"), body.get("label", ""))
        if path not in _POST_ROUTES:
            raise _RequestError(HTTPStatus.NOT_FOUND if path not in _GET_ROUTES else HTTPStatus.METHOD_NOT_ALLOWED,
                                f"no POST route {path!r}; POST goes to {', '.join(sorted(_POST_ROUTES))}")
        body = self._json_body()
        allowed = _POST_ROUTES[path]
        extra = sorted(set(body) - allowed)
        if extra:
            raise _RequestError(HTTPStatus.BAD_REQUEST, f"unknown field {extra[0]!r} for {path}; "
                                f"it takes {', '.join(sorted(allowed))}")
        if path == "/api/node_effects" and "kept" not in body:
            raise _RequestError(HTTPStatus.BAD_REQUEST, '/api/node_effects needs "kept": [edge names]')
        with self.server.lock:  # the body is read first: a slow client never holds the engine
            if path == "/api/evaluate":
                return ex.evaluate(**body)
            if path == "/api/node_effects":
                return ex.node_effects(body["kept"])
            if path == "/api/why":
                return ex.why(**body)
            if path == "/api/why/trace":
                return ex.trace(**body)
            if path == "/api/attend":
                return ex.attend(**body)
            if path == "/api/intervene":
                return ex.intervene(**body)
            if path == "/api/generate":
                return ex.generate(**body)
            if path == "/api/interventions":
                return ex.save_interventions(body.get("interventions"))
            if path == "/api/fire":
                return ex.fire(**body)
            return ex.save_notes(**body)

    def _json_body(self) -> dict[str, Any]:
        asked = self.close_connection  # what the request's headers asked for (http.server decided it)
        self.close_connection = True  # until the body is read, this connection cannot carry another request
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length header")
        n = int(length)
        if n > self.server.max_body:
            raise _RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"the body is {n} bytes; at most {self.server.max_body} are accepted")
        raw = self.rfile.read(n)
        self.close_connection = asked
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _RequestError(HTTPStatus.BAD_REQUEST, f"malformed JSON body ({getattr(err, 'msg', err)})") from None
        if not isinstance(body, dict):
            raise _RequestError(HTTPStatus.BAD_REQUEST, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    # ------------------------------------------------------------------ answering
    def _answer(self, route: Any) -> None:
        try:
            self._check_host()
            result = route()
            status = HTTPStatus.OK
        except _RequestError as err:
            status, result = err.status, {"error": str(err)}
        except ExplorerError as err:
            status, result = HTTPStatus.BAD_REQUEST, {"error": _one_line(err)}
        except Exception as err:  # the server stays up; the traceback goes to stderr
            traceback.print_exc(file=sys.stderr)
            status, result = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {_one_line(err)}"}
        if isinstance(result, bytes):
            self._send(status, result, "text/html; charset=utf-8")
        else:
            self._send(status, json.dumps(result, allow_nan=False).encode(), "application/json")

    def _check_host(self) -> None:
        """Only pages served from this address may call it (DNS rebinding guard)."""
        host = self.headers.get("Host", "")
        port = self.server.server_address[1]
        if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            self.close_connection = True
            raise _RequestError(HTTPStatus.FORBIDDEN, f"requests must be addressed to 127.0.0.1:{port}")

    def _send(self, status: HTTPStatus, data: bytes, kind: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer: nobody to tell
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if not self.server.quiet:
            super().log_message(format, *args)


_GET_ROUTES = {"/", "/index.html", "/api/graph", "/api/view", "/api/head"}
_POST_ROUTES = {
    "/api/evaluate": {"removed", "ablated", "kept", "prompt", "k"},
    "/api/node_effects": {"kept"},
    "/api/notes": {"node", "label", "note"},
    "/api/why": {"prompt", "a", "b", "totals"},
    "/api/why/trace": {"node", "prompt", "a", "b"},
    "/api/attend": {"head", "key", "prompt", "query"},
    "/api/intervene": {"interventions", "prompt", "k"},
    "/api/generate": {"interventions", "prompt", "max_new_tokens"},
    "/api/interventions": {"interventions"},
    "/api/fire": {"node", "top"},
}


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def start(explorer: Explorer | AttributionExplorer, port: int = 0, *, quiet: bool = True) -> ExplorerServer:
    """Start serving in a background thread (``port=0``: a free port); stop with ``server.shutdown()``."""
    server = ExplorerServer(explorer, port, quiet=quiet)
    threading.Thread(target=server.serve_forever, name="acdc-explorer", daemon=True).start()
    return server


def serve(explorer: Explorer | AttributionExplorer, port: int = 8765, *, open_browser: bool = True, quiet: bool = False) -> None:
    """Serve until interrupted (Ctrl-C), opening the page in the default browser unless asked not to."""
    try:
        server = ExplorerServer(explorer, port, quiet=quiet)
    except OSError as err:
        raise OSError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); pass --port N "
                      "(another number, or 0 for any free port)") from None
    print(f"acdc explore: serving {server.url} (Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("acdc explore: stopped", flush=True)
    finally:
        server.server_close()
