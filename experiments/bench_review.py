"""Responsiveness of ``bmiss review``: time to first plot and per edit, in headless Chromium.

The case is made with the CLI (recorded in the JSON)::

    bmiss simulate --duration 20 --out REC.npz
    bmiss decompose REC.npz --method cbss --out DEC.npz

then this script serves DEC for review (bmiss.review.server.ReviewServer, in process), opens the
page in Debian's chromium through Playwright and measures, in the page (``performance.now()``):

* first plot: from navigation start to the moment the table, raster, source, rate and MUAP of
  the first unit are drawn;
* per edit: from the key press / click to the redrawn page (the server's share in ``server_s``);
* zoom: from the key press to the redraw with the server's detail.

The server whitens the recording and compiles the update in the background once the first plot
is drawn (``warm_up_after_first_plot_s``); the edits are timed after that.

Baseline in the same run: reading the two files (``io.load_recording`` + ``io.load_decomposition``).

    python experiments/bench_review.py --rec REC.npz --dec DEC.npz --json results/bench_review.json \
        [--label 64ch_20s] [--screenshot docs/review.png]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(rec_path: str, dec_path: str, screenshot: str | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    from bmiss import io
    from bmiss.review.edits import Review
    from bmiss.review.server import ReviewServer

    t = time.perf_counter()
    rec = io.load_recording(rec_path)
    dec = io.load_decomposition(dec_path)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    rv = Review(dec, rec, source_path=dec_path)
    t_init = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp(prefix="bench_review_"))
    srv = ReviewServer(rv, out_path=tmp / "edited.npz").start()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync"]
    out: dict = {"n_channels": rec.n_channels, "n_samples": rec.n_samples, "fs": rec.fs,
                 "duration_s": rec.duration_s, "n_units": dec.n_units, "load_files_s": t_load, "review_init_s": t_init}
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=chromium, headless=True,
                                                       args=flags, viewport={"width": 1280, "height": 820})
            page = ctx.new_page()
            t = time.perf_counter()
            page.goto(srv.url)
            page.wait_for_function("window.bmiss && window.bmiss.firstPlotMs !== null", timeout=120000)
            out["first_plot_wall_s"] = time.perf_counter() - t
            out["first_plot_page_ms"] = page.evaluate("window.bmiss.firstPlotMs")
            t_fp = time.perf_counter()

            def settle(action):
                seq = page.evaluate("window.bmiss.seq")
                t0 = time.perf_counter()
                action()
                page.wait_for_function(f"window.bmiss.seq > {seq} && window.bmiss.S.busy === 0", timeout=90000)
                return time.perf_counter() - t0

            def edit(name, action):
                page.evaluate("window.bmiss.lastError = null")
                wall = settle(action)
                e = page.evaluate("window.bmiss.edits[window.bmiss.edits.length - 1]")
                err = page.evaluate("window.bmiss.lastError")
                return {"edit": name, "page_ms": e["ms"] if e else None, "server_s": e.get("server_s") if e else None,
                        "wall_s": wall, "error": err}

            # the unit with most discharges: the heaviest plots
            u = int(np.argmax([len(s) for s in rv.dec.spikes]))
            sel = settle(lambda: page.evaluate(f"window.bmiss.select({u})"))
            out["select_unit_s"] = sel
            # navigation with the keyboard
            out["next_unit_s"] = settle(lambda: page.keyboard.press("j"))
            settle(lambda: page.keyboard.press("k"))
            view = page.evaluate("window.bmiss.S.view")
            out["unit_view_json_bytes"] = len(json.dumps(view))
            out["source_buckets"] = len(view["source"].get("lo") or view["source"].get("y"))
            t_zoom = []
            for _ in range(4):
                t_zoom.append(settle(lambda: page.keyboard.press("+")))
            out["zoom_s"] = t_zoom
            out["zoomed_kind"] = page.evaluate("window.bmiss.S.view.source.kind")
            settle(lambda: page.keyboard.press("0"))
            if screenshot:  # for the README: a 64-colour palette PNG keeps it small
                from PIL import Image

                page.screenshot(path=screenshot)
                Image.open(screenshot).convert("RGB").quantize(colors=64).save(screenshot, optimize=True)
            # the server whitens the data and compiles the update in the background after the first
            # plot; the edits below are timed once that is done (an update asked for earlier waits for it)
            t_w = time.perf_counter()
            while not rv.warm and time.perf_counter() - t_w < 600:
                time.sleep(0.1)
            out["warm_up_wait_s"] = time.perf_counter() - t_w
            out["warm_up_after_first_plot_s"] = time.perf_counter() - t_fp
            sp = rv.units[u].spikes
            src = rv.units[u].source
            edits = []
            page.keyboard.press("d")
            x, y = page.evaluate(f"window.bmiss.toClient('source', {int(sp[len(sp) // 2])}, {float(src[sp[len(sp) // 2]])})")
            edits.append(edit("delete discharge (click)", lambda: page.mouse.click(x, y)))
            span = int(rec.fs * 2)
            t0 = int(sp[len(sp) // 3])
            top = min(1.5, page.evaluate("window.bmiss.S.sy[1]") - 0.01)  # inside the plot
            a = page.evaluate(f"window.bmiss.toClient('source', {t0}, {top})")
            b = page.evaluate(f"window.bmiss.toClient('source', {t0 + span}, 0.2)")

            def drag():
                page.mouse.move(a[0], a[1])
                page.mouse.down()
                page.mouse.move(b[0], b[1], steps=3)
                page.mouse.up()

            edits.append(edit("delete discharges (box, 2 s)", drag))
            page.keyboard.press("a")
            edits.append(edit("add discharges (box, 2 s)", drag))
            page.keyboard.press("z")
            edits.append(edit("remove rate outliers", lambda: page.keyboard.press("o")))
            edits.append(edit("update filter", lambda: page.keyboard.press("u")))
            edits.append(edit("update filter (again)", lambda: page.keyboard.press("u")))
            edits.append(edit("undo", lambda: page.keyboard.press("Control+z")))
            edits.append(edit("redo", lambda: page.keyboard.press("Control+y")))
            edits.append(edit("split", lambda: page.keyboard.press("s")))
            edits.append(edit("merge (the split part back)", lambda: (page.fill("#merge-with", str(u + 1)),
                                                                       page.click("#b-merge"))))
            edits.append(edit("flag", lambda: page.keyboard.press("f")))
            edits.append(edit("delete unit", lambda: page.keyboard.press("x")))
            edits.append(edit("save", lambda: page.keyboard.press("Control+s")))
            out["edits"] = edits
            out["saved_ok"] = io.load_decomposition(tmp / "edited.npz").n_units == rv.n_units
            ctx.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rec", required=True)
    ap.add_argument("--dec", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--label", default="case")
    ap.add_argument("--make", default="", help="the commands that made REC and DEC (recorded)")
    ap.add_argument("--screenshot", default=None)
    a = ap.parse_args(argv)
    from bmiss.files import provenance, write_json

    res = measure(a.rec, a.dec, a.screenshot)
    res["first_plot_over_load"] = res["first_plot_wall_s"] / res["load_files_s"]
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("cases", {})[a.label] = {"made_by": a.make, **res,
                                             "provenance": provenance(rec=a.rec, dec=a.dec, label=a.label)}
    doc["what"] = ("bmiss review in headless Debian chromium (Playwright): time to first plot and per edit "
                   "(page_ms: key press/click to redrawn page; server_s: the edit on the server); baseline "
                   "load_files_s = reading the recording and the decomposition in the same run")
    write_json(path, doc)
    print(json.dumps({k: v for k, v in res.items() if k != "edits"}, indent=1, default=str))
    for e in res["edits"]:
        print(f"  {e['edit']:45s} {e['page_ms']:8.0f} ms   server {e['server_s'] or 0:.3f} s  {e['error'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
