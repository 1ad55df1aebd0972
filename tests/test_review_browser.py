"""bmiss review in a real browser: headless Debian Chromium driven by Playwright.

Covers loading (a screenshot checked to show the plots), every kind of edit by mouse and keyboard,
zoom with detail from the server, undo/redo, save and reload.  The review server runs in this
process, so each edit is also checked on the server's working copy.

Needs /usr/bin/chromium (Debian package ``chromium``; CI's .ci/run installs it) and the Python
package ``playwright`` (test extra).  Playwright's own browser downloads are never used.
"""
from __future__ import annotations

import io as _io
import shutil
from pathlib import Path

import numpy as np
import pytest

from review_tiny import FS, tiny_decomposition, tiny_recording

from bmiss import io
from bmiss.metrics import rate_of_agreement

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Debian's chromium: install it with "
                    "`apt-get install -y --no-install-recommends chromium` (CI's .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the Python package playwright: pip install -e '.[test]'")
    from bmiss.review.edits import Review
    from bmiss.review.server import ReviewServer

    tmp = tmp_path_factory.mktemp("review_browser")
    rec = tiny_recording()
    dec_path = tmp / "dec.npz"
    io.save_decomposition(dec_path, tiny_decomposition())
    rv = Review(io.load_decomposition(dec_path), rec, source_path=str(dec_path))
    out = tmp / "dec.edited.npz"
    srv = ReviewServer(rv, out_path=out).start()
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url)
            page.wait_for_function("window.bmiss && window.bmiss.firstPlotMs !== null", timeout=30000)
            yield {"page": page, "rv": rv, "srv": srv, "rec": rec, "out": out, "dec_path": dec_path, "tmp": tmp,
                   "errors": errors, "ctx": ctx}
            ctx.close()
    finally:
        srv.stop()


def settle(page, action):
    """Run ``action`` (which starts an edit/redraw) and wait until the page has redrawn."""
    seq = page.evaluate("window.bmiss.seq")
    action()
    page.wait_for_function(f"window.bmiss.seq > {seq} && window.bmiss.S.busy === 0", timeout=30000)


def select(page, unit):
    settle(page, lambda: page.click(f"#unit-rows tr[data-unit='{unit}']"))
    assert page.evaluate("window.bmiss.S.unit") == unit


def zoom(page, t0, t1):
    settle(page, lambda: page.evaluate(f"window.bmiss.zoomTo({t0}, {t1})"))


def client(page, t, v):
    return page.evaluate(f"window.bmiss.toClient('source', {t}, {v})")


def pixel_stats(page, cid):
    return page.evaluate("""(id) => {
        const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0, red = 0, blue = 0;
        for (let k = 0; k < d.length; k += 4) {
            const [r, g, b] = [d[k], d[k + 1], d[k + 2]];
            if (r + g + b < 600) ink++;
            if (r > 180 && g < 90 && b < 90) red++;
            if (b > 120 && r < 90) blue++;
        }
        return {ink: ink / (d.length / 4), red: red, blue: blue / (d.length / 4), w: c.width, h: c.height};
    }""", cid)


def test_load_shows_every_plot(app):
    page = app["page"]
    assert page.locator("#unit-rows tr").count() == 4
    src, rate, muap, ov = (pixel_stats(page, c) for c in ("source", "rate", "muap", "overview"))
    assert src["w"] > 300 and src["blue"] > 0.005 and src["red"] > 50, src  # trace and discharge markers
    assert rate["ink"] > 0.005 and muap["ink"] > 0.02 and ov["ink"] > 0.005, (rate, muap, ov)
    # the screenshot a user sees shows the same: a blue trace, red discharges, black MUAPs
    import matplotlib.image as mpimg

    shot = mpimg.imread(_io.BytesIO(page.screenshot(full_page=True)), format="png")[..., :3]
    (app["tmp"] / "shot.png").write_bytes(page.screenshot())
    box = page.locator("#source").bounding_box()
    reg = shot[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    blue = ((reg[..., 2] > 0.45) & (reg[..., 0] < 0.35)).mean()
    red = ((reg[..., 0] > 0.7) & (reg[..., 1] < 0.35) & (reg[..., 2] < 0.35)).sum()
    assert blue > 0.005 and red > 50 and reg.std() > 0.05, (blue, red)
    mb = page.locator("#muap").bounding_box()
    mreg = shot[int(mb["y"]):int(mb["y"] + mb["height"]), int(mb["x"]):int(mb["x"] + mb["width"])]
    assert (mreg.sum(axis=2) < 1.2).mean() > 0.01
    assert "unit 0 of 4" in page.inner_text("#title")
    # the properties' 95 % interval is the file's calibrated one (cv 3.5 m/s: 2.8-4.2), not +-1.96 std (2.814-4.186)
    assert "2.800 … 4.200" in page.inner_text("#params"), page.inner_text("#params")
    assert page.evaluate("window.bmiss.firstPlotMs") > 0
    assert app["errors"] == []


def test_keyboard_navigation_and_zoom_detail(app):
    page = app["page"]
    settle(page, lambda: page.keyboard.press("j"))
    assert page.evaluate("window.bmiss.S.unit") == 1
    settle(page, lambda: page.keyboard.press("k"))
    assert page.evaluate("window.bmiss.S.unit") == 0
    assert page.evaluate("window.bmiss.S.view.source.kind") == "minmax"
    for _ in range(5):
        settle(page, lambda: page.keyboard.press("+"))
    v = page.evaluate("window.bmiss.S.view")
    assert v["source"]["kind"] == "raw" and v["t1"] - v["t0"] < 700  # the server sent the raw samples
    settle(page, lambda: page.keyboard.press("0"))
    assert page.evaluate("window.bmiss.S.view.source.kind") == "minmax"


def test_delete_discharges_by_click_and_box(app):
    page, rv, rec = app["page"], app["rv"], app["rec"]
    select(page, 0)
    false = np.setdiff1d(rv.units[0].spikes, rec.true_spikes[0])
    src = rv.units[0].source
    page.keyboard.press("d")
    x, y = client(page, int(false[0]), float(src[false[0]]))
    settle(page, lambda: page.mouse.click(x, y))
    assert false[0] not in rv.units[0].spikes and len(np.setdiff1d(rv.units[0].spikes, rec.true_spikes[0])) == 2
    # box around the second false discharge, zoomed in
    t = int(false[1])
    zoom(page, t - 300, t + 300)
    xa, ya = client(page, t - 15, float(src[t]) + 0.3)
    xb, yb = client(page, t + 15, float(src[t]) - 0.3)

    def drag():
        page.mouse.move(xa, ya)
        page.mouse.down()
        page.mouse.move((xa + xb) / 2, (ya + yb) / 2, steps=3)
        page.mouse.move(xb, yb, steps=3)
        page.mouse.up()

    settle(page, drag)
    assert t not in rv.units[0].spikes
    assert rv.log[-1]["op"] == "delete_discharges" and "box" in rv.log[-1]["what"]


def test_add_discharges_by_click_and_box(app):
    page, rv, rec = app["page"], app["rv"], app["rec"]
    missed = np.setdiff1d(rec.true_spikes[0], rv.units[0].spikes)
    src = rv.units[0].source
    page.keyboard.press("a")
    t = int(missed[0])
    zoom(page, t - 400, t + 400)
    x, y = client(page, t + 3, float(src[t]))
    settle(page, lambda: page.mouse.click(x, y))
    assert t in rv.units[0].spikes
    # a box over the whole recording between source values 0.5 and 2 adds the other missed ones
    settle(page, lambda: page.keyboard.press("0"))
    n0 = len(rv.units[0].spikes)
    top = min(2.0, page.evaluate("window.bmiss.S.sy[1]") - 0.01)  # the box's top edge inside the plot
    xa, ya = client(page, 0, top)
    xb, yb = client(page, rv.n_samples - 1, 0.5)

    def drag():
        page.mouse.move(xa + 1, ya)
        page.mouse.down()
        page.mouse.move(xb - 1, yb, steps=4)
        page.mouse.up()

    settle(page, drag)
    assert len(rv.units[0].spikes) >= n0 + 5
    assert rate_of_agreement(rv.units[0].spikes, rec.true_spikes[0], FS)["roa"] > 0.9
    assert page.locator("#unit-rows tr[data-unit='0'] td").nth(1).inner_text() == str(len(rv.units[0].spikes))


def test_outliers_update_undo_redo(app):
    page, rv, rec = app["page"], app["rv"], app["rec"]
    page.keyboard.press("z")
    n = len(rv.log)
    settle(page, lambda: page.keyboard.press("o"))  # nothing left to remove is fine; logged only if removed
    assert len(rv.log) in (n, n + 1)
    # damage again, then update: the filter from the discharges finds the unit back
    settle(page, lambda: page.click("#b-undo"))
    settle(page, lambda: page.click("#b-undo"))
    before = rv.units[0].spikes.copy()
    settle(page, lambda: page.keyboard.press("u"))
    assert rv.log[-1]["op"] == "update"
    assert rate_of_agreement(rv.units[0].spikes, rec.true_spikes[0], FS)["roa"] > 0.97
    settle(page, lambda: page.keyboard.press("Control+z"))
    assert np.array_equal(rv.units[0].spikes, before)
    settle(page, lambda: page.keyboard.press("Control+y"))
    assert rv.log[-1]["op"] == "redo"
    assert rate_of_agreement(rv.units[0].spikes, rec.true_spikes[0], FS)["roa"] > 0.97
    assert "edited" in page.inner_text("#title")


def test_merge_split_flag_delete_unit(app):
    page, rv, rec = app["page"], app["rv"], app["rec"]
    select(page, 2)
    assert "unit 3" in page.inner_text("#dups")
    settle(page, lambda: page.keyboard.press("m"))  # merges the top duplicate
    assert rv.n_units == 3 and page.locator("#unit-rows tr").count() == 3
    assert rate_of_agreement(rv.units[2].spikes, rec.true_spikes[2], FS)["roa"] > 0.99
    select(page, 0)
    page.fill("#merge-with", "1")
    settle(page, lambda: page.click("#b-merge"))
    assert rv.n_units == 2
    settle(page, lambda: page.keyboard.press("s"))  # split the mixed unit again
    assert rv.n_units == 3 and rv.log[-1]["op"] == "split"
    assert rate_of_agreement(rv.units[0].spikes, rec.true_spikes[0], FS)["roa"] > 0.95
    settle(page, lambda: page.keyboard.press("f"))
    assert rv.units[0].flagged and "flagged" in page.inner_text("#title")
    select(page, 1)
    settle(page, lambda: page.keyboard.press("x"))
    assert rv.n_units == 2 and page.locator("#unit-rows tr").count() == 2
    assert page.evaluate("window.bmiss.lastError") is None, page.inner_text("#status")


def test_save_and_reload(app):
    page, rv = app["page"], app["rv"]
    assert "Save*" in page.inner_text("#b-save")
    settle(page, lambda: page.keyboard.press("Control+s"))
    out = app["out"]
    assert out.exists() and "saved" in page.inner_text("#status")
    assert page.inner_text("#b-save") == "Save"
    d2 = io.load_decomposition(out)
    ops = [e["op"] for e in d2.meta["review"]["log"]]
    assert d2.n_units == 2 and ops.count("merge") == 2 and "update" in ops and "split" in ops
    assert d2.meta["review"]["flagged"] == [0]
    assert io.load_decomposition(app["dec_path"]).n_units == 4  # the input is unchanged
    # reload the page: the session's state comes back from the server
    page.reload()
    page.wait_for_function("window.bmiss && window.bmiss.firstPlotMs !== null", timeout=30000)
    assert page.locator("#unit-rows tr").count() == 2
    # and a new review of the saved file shows it as saved
    from bmiss.review.edits import Review
    from bmiss.review.server import ReviewServer

    srv2 = ReviewServer(Review(d2, app["rec"], source_path=str(out)), out_path=app["tmp"] / "again.npz").start()
    try:
        p2 = app["ctx"].new_page()
        p2.goto(srv2.url)
        p2.wait_for_function("window.bmiss && window.bmiss.firstPlotMs !== null", timeout=30000)
        assert p2.locator("#unit-rows tr").count() == 2 and "⚑" in p2.inner_text("#unit-rows tr[data-unit='0']")
        p2.close()
    finally:
        srv2.stop()
    # a page without the token gets nothing
    p3 = app["ctx"].new_page()
    resp = p3.goto(f"http://127.0.0.1:{app['srv'].port}/")
    assert resp.status == 403
    p3.close()
    assert app["errors"] == []
