"""The review web app: Starlette, served by uvicorn on 127.0.0.1 only.

Every request (page, script, API) must carry the session's random token, as ``?token=`` in the
URL or in the ``X-Bmiss-Token`` header; others get 403.  The page (``static/index.html`` +
``static/app.js``) is plain JavaScript drawing on canvases: no build step, nothing fetched from
elsewhere, so it works offline.

API (JSON; ``i`` a unit index)::

    GET  /api/state                       table of all units, undo/redo/dirty
    GET  /api/unit/{i}?t0=&t1=&px=        decimated source, discharges, rate, quality, duplicates
    GET  /api/muap/{i}                    MUAP on the grid
    GET  /api/overview?px=                raster of all units
    GET  /api/log                         the edit log
    POST /api/edit  {"op": ..., "unit": i, ...}   one edit (ops: see EDIT_OPS)
    POST /api/undo, /api/redo, /api/save  {"path": optional}
"""
from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import BmissError
from ..files import dumps_json
from . import views

STATIC = Path(__file__).resolve().parent / "static"

# op -> (Review method, keyword arguments it accepts from the request)
EDIT_OPS = {
    "delete_discharges": ("delete_discharges", ("samples", "t0", "t1", "lo", "hi")),
    "add_discharges": ("add_discharges", ("samples", "t0", "t1", "lo", "hi")),
    "remove_outliers": ("remove_outliers", ("k",)),
    "update": ("update", ()),
    "delete_unit": ("delete_unit", ()),
    "flag": ("flag", ("flagged",)),
    "merge": ("merge", ("other",)),
    "split": ("split", ("threshold",)),
}


class _JSON(JSONResponse):
    def render(self, content) -> bytes:
        return dumps_json(content, indent=None).encode("utf-8")


def build_app(review, *, token: str, out_path: Path, force: bool = True) -> Starlette:
    """The Starlette app for one :class:`~bmiss.review.edits.Review`.

    ``out_path``: where ``/api/save`` writes by default.  ``force``: whether the first save may
    replace an existing file (later saves of the session replace their own output).
    """
    lock = threading.RLock()
    state = {"saved_once": False, "prep_started": False, "timings": []}

    def _prep_in_background():
        if state["prep_started"] or review.rec is None:
            return
        state["prep_started"] = True

        def work():
            try:
                review.warm_up()
            except Exception:  # noqa: BLE001  (reported again when an update asks for it)
                pass

        threading.Thread(target=work, daemon=True, name="bmiss-review-prepare").start()

    def ok(request: Request) -> bool:
        got = request.query_params.get("token") or request.headers.get("x-bmiss-token") or ""
        return secrets.compare_digest(got.encode(), token.encode())

    def guard(fn):
        def wrapped(request: Request):
            if not ok(request):
                return Response("forbidden: this page needs the token printed by `bmiss review`", status_code=403)
            t = time.perf_counter()
            try:
                with lock:
                    resp = fn(request)
            except BmissError as e:
                return _JSON({"error": " ".join(str(e).split())}, status_code=400)
            state["timings"].append((request.url.path, time.perf_counter() - t))
            return resp
        return wrapped

    async def body(request: Request) -> dict:
        try:
            d = await request.json()
        except Exception:  # noqa: BLE001
            d = {}
        return d if isinstance(d, dict) else {}

    def index(request):
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__TOKEN__", token))

    def app_js(request):
        return FileResponse(STATIC / "app.js", media_type="text/javascript")

    def api_state(request):
        return _JSON(views.state(review))

    def _int(request, key, default=None):
        v = request.query_params.get(key)
        if v is None or v == "":
            return default
        try:
            return int(float(v))
        except ValueError:
            raise BmissError(f"{key}={v!r} is not a number") from None

    def api_unit(request):
        i = request.path_params["i"]
        return _JSON(views.unit_view(review, i, _int(request, "t0"), _int(request, "t1"), _int(request, "px", 1200)))

    def api_muap(request):
        out = _JSON(views.muap_view(review, request.path_params["i"]))
        _prep_in_background()  # the page has drawn everything: whiten the data for "update" now
        return out

    def api_overview(request):
        return _JSON(views.overview(review, _int(request, "px", 1200)))

    def api_log(request):
        return _JSON({"log": review.log})

    def _after(extra: dict) -> _JSON:
        return _JSON({**extra, "state": views.state(review)})

    async def api_edit(request):
        d = await body(request)
        return await _run_sync(request, lambda: _edit(d))

    def _edit(d):
        op = d.get("op")
        if op not in EDIT_OPS:
            from ..errors import did_you_mean

            raise BmissError(f"unknown edit {op!r}{did_you_mean(op, EDIT_OPS)}; one of {', '.join(EDIT_OPS)}")
        meth, keys = EDIT_OPS[op]
        if "unit" not in d:
            raise BmissError(f"{op}: which unit? (give 'unit')")
        kw = {k: d[k] for k in keys if d.get(k) is not None}
        t = time.perf_counter()
        if op == "merge":
            if "other" not in kw:
                raise BmissError("merge: give 'other', the unit to merge into 'unit'")
            res = review.merge(d["unit"], kw["other"])
        else:
            res = getattr(review, meth)(d["unit"], **kw)
        return _after({"result": res, "op": op, "server_s": time.perf_counter() - t})

    async def _run_sync(request, fn):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(guard(lambda _r: fn()), request)

    async def api_undo(request):
        return await _run_sync(request, lambda: _after({"undone": review.undo()}))

    async def api_redo(request):
        return await _run_sync(request, lambda: _after({"redone": review.redo()}))

    async def api_save(request):
        d = await body(request)

        def save():
            p = Path(d.get("path") or out_path)
            p = review.save(p, force=force or state["saved_once"] or p != out_path)
            state["saved_once"] = True
            return _after({"saved": str(p)})

        return await _run_sync(request, save)

    routes = [
        Route("/", guard(index)),
        Route("/app.js", guard(app_js)),
        Route("/api/state", guard(api_state)),
        Route("/api/unit/{i:int}", guard(api_unit)),
        Route("/api/muap/{i:int}", guard(api_muap)),
        Route("/api/overview", guard(api_overview)),
        Route("/api/log", guard(api_log)),
        Route("/api/edit", api_edit, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/redo", api_redo, methods=["POST"]),
        Route("/api/save", api_save, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.review = review
    app.state.timings = state["timings"]
    return app


class ReviewServer:
    """Run the app in a background thread on 127.0.0.1 (``port=0``: a free port).

    Examples
    --------
    >>> srv = ReviewServer(review, out_path="dec.edited.npz").start()   # doctest: +SKIP
    >>> print(srv.url); srv.stop()                                      # doctest: +SKIP
    """

    def __init__(self, review, *, out_path, port: int = 0, force: bool = False, token: str | None = None):
        import uvicorn

        self.token = token or secrets.token_urlsafe(24)
        self.app = build_app(review, token=self.token, out_path=Path(out_path), force=force)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", int(port)))
        except OSError as e:
            self.sock.close()
            raise BmissError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); try --port 0") from None
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                                    access_log=False))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def start(self) -> "ReviewServer":
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="bmiss-review-server")
        self.thread.start()
        t = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t > 30:
                raise RuntimeError("the review server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.sock.close()

    def wait(self) -> None:
        """Block until Ctrl-C (or the server stops)."""
        try:
            while self.thread is not None and self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def default_out(dec_path) -> Path:
    """``DEC.edited.npz`` next to the input ``DEC.npz``."""
    p = Path(dec_path)
    stem = p.name[:-4] if p.name.lower().endswith(".npz") else p.name
    return p.with_name(stem + ".edited.npz")


def review(decomposition, recording, *, out=None, port: int = 0, open_browser: bool = True, force: bool = False,
           block: bool = True, rec=None) -> ReviewServer:
    """Open a decomposition for review in the browser (what ``bmiss review`` runs).

    Parameters
    ----------
    decomposition : path of a decomposition ``.npz`` (never modified).
    recording : path of the recording it was made from (any readable type), or None with ``rec``.
    out : where the page's Save writes (default ``DEC.edited.npz``).
    port : TCP port on 127.0.0.1 (0: a free one).
    open_browser : open the page in the default browser.
    force : let the first save replace an existing ``out``.
    block : serve until Ctrl-C (False: return the running server; call ``.stop()``).
    rec : an already loaded :class:`~bmiss.io.Recording` (e.g. with a layout applied).

    Returns
    -------
    ReviewServer (stopped when ``block``).

    Examples
    --------
    >>> srv = review("dec.npz", "rec.npz", open_browser=False, block=False)  # doctest: +SKIP
    >>> srv.url                                                              # doctest: +SKIP
    'http://127.0.0.1:40123/?token=...'
    """
    from .. import io
    from ..api import check_pair
    from .edits import Review

    dec = io.load_decomposition(decomposition)
    if rec is None:
        rec = io.load_recording(recording)
    check_pair(dec, rec, dec_name=str(decomposition), rec_name=str(recording))
    out = Path(out) if out is not None else default_out(decomposition)
    rv = Review(dec, rec, source_path=str(decomposition))
    srv = ReviewServer(rv, out_path=out, port=port, force=force).start()
    print(f"bmiss review: {dec.n_units} units of {decomposition}; Save writes {out}", flush=True)
    print(f"open {srv.url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(srv.url)
    if block:
        srv.wait()
        if rv.dirty:
            print("bmiss review: stopped with unsaved edits (they are lost; the edit log was not written)",
                  flush=True)
    return srv
