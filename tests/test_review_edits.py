"""bmiss review without a browser: every edit, undo/redo, the log, saving, the decimated views
and the HTTP API (token, edits, save) of the server.

Data: tests/review_tiny.py (8 channels x 5 s, three known units; unit 0 damaged, unit 3 a
duplicate of unit 2)."""
from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from review_tiny import FS, tiny_decomposition, tiny_recording

from bmiss import io
from bmiss.errors import UserError
from bmiss.metrics import rate_of_agreement
from bmiss.quality import sil as q_sil
from bmiss.review import views
from bmiss.review.edits import Review


@pytest.fixture(scope="module")
def rec():
    return tiny_recording()


@pytest.fixture
def rv(rec):
    return Review(tiny_decomposition(), rec, source_path="in.npz")


def roa(sp, true):
    return rate_of_agreement(sp, true, FS)["roa"]


def test_load_quality_and_duplicates(rv):
    rows = rv.summary()
    assert [r["unit"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["sil"] > 0.9 and rows[0]["sil"] < rows[1]["sil"]  # unit 0 is damaged
    assert [d["unit"] for d in rows[2]["duplicates"]] == [3] and rows[2]["duplicates"][0]["shared"] > 0.95
    assert rows[0]["duplicates"] == [] and rows[1]["duplicates"] == []
    assert not rv.dirty and not rv.can_undo


def test_delete_discharges_click_and_box(rv, rec):
    true0 = rec.true_spikes[0]
    false = np.setdiff1d(rv.units[0].spikes, true0)
    assert len(false) == 3
    assert rv.delete_discharges(0, samples=[false[0] + 5]) == 1  # a click 5 samples off
    assert false[0] not in rv.units[0].spikes
    # box: the remaining false discharges by time window only around them
    n = rv.delete_discharges(0, t0=false[1] - 3, t1=false[1] + 3, lo=-10, hi=10)
    assert n == 1 and false[1] not in rv.units[0].spikes
    # an empty box changes nothing and logs nothing
    before = len(rv.log)
    assert rv.delete_discharges(0, t0=0, t1=50) == 0 and len(rv.log) == before
    # box by amplitude: every discharge whose source value is above 0.5 in the first second
    sp, src = rv.units[1].spikes, rv.units[1].source
    expect = sp[(sp <= FS) & (src[sp] >= 0.5)]
    assert rv.delete_discharges(1, t0=0, t1=FS, lo=0.5, hi=100) == len(expect) > 0
    assert np.intersect1d(rv.units[1].spikes, expect).size == 0
    assert [e["op"] for e in rv.log] == ["delete_discharges"] * 3
    assert all(e["rule"] and e["time"] for e in rv.log)


def test_add_discharges_click_snaps_to_peak_and_box(rv, rec):
    true0 = rec.true_spikes[0]
    missed = np.setdiff1d(true0, rv.units[0].spikes)
    assert len(missed) == 8
    assert rv.add_discharges(0, samples=[missed[0] + 6]) == 1  # clicked 6 samples late
    got = np.setdiff1d(rv.units[0].spikes, rec.true_spikes[0])
    assert missed[0] in rv.units[0].spikes, "the click must snap to the source peak at the discharge"
    # a box over the whole recording at source values 0.5..2 adds the other missed ones
    n = rv.add_discharges(0, t0=0, t1=rv.n_samples, lo=0.5, hi=2.0)
    assert n >= 6
    assert roa(rv.units[0].spikes, true0) > 0.9
    assert len(got) == 3  # the false ones are still there (no deletion happened)
    # a click next to an existing discharge does not add a second one within 20 ms
    sp = rv.units[1].spikes
    assert rv.add_discharges(1, samples=[sp[5] + 3]) == 0


def test_remove_outliers_removes_false_discharges_only(rv, rec):
    true0 = rec.true_spikes[0]
    out = rv.rate_outliers(0)
    assert len(out) >= 2 and not np.isin(out, true0).any()
    assert rv.remove_outliers(0) == len(out)
    assert np.isin(out, rv.units[0].spikes).sum() == 0
    assert rv.remove_outliers(1) == 0  # a clean unit has none


def test_update_recovers_the_unit(rv, rec):
    true0 = rec.true_spikes[0]
    assert roa(rv.units[0].spikes, true0) < 0.8
    old_filter = rv.units[0].filter
    n = rv.update(0)
    assert n == len(rv.units[0].spikes)
    assert roa(rv.units[0].spikes, true0) > 0.97
    assert rv.quality(0)["sil"] > 0.95
    assert not np.allclose(rv.units[0].filter, old_filter)
    src = rv.units[0].source
    assert abs(float(np.mean(src[rv.units[0].spikes])) - 1.0) < 1e-3  # normalised at the discharges
    rv.undo()
    assert roa(rv.units[0].spikes, true0) < 0.8


def test_merge_split_delete_flag_undo_redo(rv, rec):
    tr = rec.true_spikes
    assert rv.merge(2, 3) == len(tr[2])
    assert rv.n_units == 3 and roa(rv.units[2].spikes, tr[2]) > 0.99
    assert rv.duplicates(2) == []
    rv.undo()
    assert rv.n_units == 4 and np.array_equal(rv.units[3].spikes, tr[2] + 2)
    rv.redo()
    assert rv.n_units == 3
    # merge two different units, then split them again by source value
    rv.update(0)
    rv.merge(0, 1)
    assert rv.n_units == 2
    moved = rv.split(0)
    assert rv.n_units == 3 and moved > 0
    assert roa(rv.units[0].spikes, tr[0]) > 0.95, "the upper class is the unit whose source it is"
    low = rv.units[1].spikes  # the lower class is the merged-in unit (less those within 20 ms of unit 0's)
    hit = np.abs(low[:, None] - tr[1][None, :]).min(axis=1) <= 1
    assert hit.mean() > 0.95 and hit.sum() > 0.5 * len(tr[1])
    assert np.isnan(rv.units[1].params).all()  # a new unit has no fitted properties
    assert np.isnan(rv.units[1].param_interval).all() and np.isfinite(rv.units[0].param_interval).all()
    with pytest.raises(UserError):
        rv.split(2, threshold=-100.0)  # every discharge in one class
    assert rv.flag(2) is True and rv.units[2].flagged
    rv.delete_unit(1)
    assert rv.n_units == 2
    ops = [e["op"] for e in rv.log]
    assert ops == ["merge", "undo", "redo", "update", "merge", "split", "flag", "delete_unit"]
    for _ in range(5):
        rv.undo()
    assert rv.n_units == 3 and rv.can_undo and rv.can_redo
    with pytest.raises(UserError):
        rv.merge(1, 1)
    with pytest.raises(UserError):
        rv.delete_unit(7)


def test_save_writes_a_new_file_and_never_the_input(rv, rec, tmp_path):
    src_path = tmp_path / "dec.npz"
    io.save_decomposition(src_path, tiny_decomposition())
    digest = hashlib.sha256(src_path.read_bytes()).hexdigest()
    r = Review(io.load_decomposition(src_path), rec, source_path=str(src_path))
    r.update(0)
    r.merge(2, 3)
    r.flag(1)
    with pytest.raises(UserError):
        r.save(src_path)
    out = r.save(tmp_path / "dec.edited.npz")
    assert not r.dirty
    assert hashlib.sha256(src_path.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    d2 = io.load_decomposition(out)
    assert d2.n_units == 3 and d2.sources.shape == (3, rec.n_samples) and d2.filters.shape[0] == 3
    assert d2.params.shape == (3, 2) and d2.param_interval.shape == (3, 2, 4)
    np.testing.assert_allclose(d2.param_interval[1], tiny_decomposition().param_interval[1])  # carried with its unit
    np.testing.assert_allclose(d2.sil[0], q_sil(d2.sources[0], d2.spikes[0], FS), rtol=1e-5)
    assert d2.sil[0] > 0.95 and np.isfinite(d2.pnr_db).all() and np.isfinite(d2.cov_isi).all()
    log = d2.meta["review"]["log"]
    assert [e["op"] for e in log] == ["update", "merge", "flag"]
    assert d2.meta["review"]["flagged"] == [1] and d2.meta["review"]["input"] == str(src_path)
    assert d2.meta["review"]["params_stale"] == [0, 2]
    assert "candidate_index" not in d2.meta
    # the file reads like any decomposition: paired with its recording and evaluated
    from bmiss.api import check_pair
    from bmiss.metrics import evaluate

    check_pair(d2, rec)
    rep = evaluate(d2, rec)
    summ = rep.get("summary", rep)
    assert summ["n_matched"] == 3 and summ["found_90"] == 3 and summ["n_duplicates"] == 0
    # reviewing the edited file again keeps the previous log
    r2 = Review(d2, rec, source_path=str(out))
    r2.delete_unit(2)
    d3 = r2.to_decomposition()
    assert d3.meta["review"]["previous"]["log"] == log


def test_envelope_is_the_min_max_of_each_bucket():
    x = np.random.default_rng(0).normal(size=10007)
    e = views.envelope(x, 100, 10007, 300)
    assert e["kind"] == "minmax" and len(e["lo"]) <= 301
    st = e["step"]
    for k in (0, 7, len(e["lo"]) - 1):
        seg = x[100 + k * st: min(100 + (k + 1) * st, 10007)]
        assert e["lo"][k] == pytest.approx(seg.min(), abs=1e-4) and e["hi"][k] == pytest.approx(seg.max(), abs=1e-4)
    assert max(e["hi"]) == pytest.approx(x[100:].max(), abs=1e-4)
    r = views.envelope(x, 50, 250, 300)
    assert r["kind"] == "raw" and len(r["y"]) == 200


def test_views_are_decimated_and_complete(rv):
    v = views.unit_view(rv, 1, px=400)
    assert v["source"]["kind"] == "minmax" and len(v["source"]["lo"]) <= 401
    assert len(v["spikes"]) == len(rv.units[1].spikes) == len(v["heights"])
    assert len(v["rate_hz"]) == len(v["spikes"]) - 1 and 10 < np.median(v["rate_hz"]) < 14
    z = views.unit_view(rv, 1, t0=2000, t1=2300, px=400)
    assert z["source"]["kind"] == "raw" and all(2000 <= t < 2300 for t in z["spikes"])
    assert [p["name"] for p in v["params"]] == ["cv_m_s", "depth_mm"] and v["params"][0]["ci95"][0] < 3.5
    assert v["params"][0]["ci95"] == pytest.approx([0.8 * 3.5, 1.2 * 3.5])  # the file's calibrated bounds
    m = views.muap_view(rv, 1)
    arr = np.asarray(m["muap"])
    assert arr.shape[0] == 8 and m["grid"] == [2, 4] and m["ptp_uv"] > 50  # MUAPs of 80-120 µV
    o = views.overview(rv, px=500)
    assert len(o["rows"]) == 4 and all(max(r) < 500 for r in o["rows"])
    assert json.dumps(views.state(rv), default=float)


def test_muap_is_the_spike_triggered_average(rv):
    from bmiss.quality import ms_to_samples
    from bmiss.templates import spike_triggered_muaps

    m = rv.muap(1)
    pre, post = ms_to_samples(5.0, FS), ms_to_samples(25.0, FS)
    sp = rv.units[1].spikes
    ok = sp[(sp >= pre) & (sp + post <= rv.n_samples)]
    ref = spike_triggered_muaps(rv.band_passed(), [ok], FS, window=(-pre, post), band=None, search_ms=(5.0, 25.0),
                                deconvolve_self=False, min_discharges=2, n_null=0)
    np.testing.assert_allclose(m["muap"], ref.muaps[0], atol=1e-3 * float(np.abs(ref.muaps[0]).max()))
    np.testing.assert_allclose(m["t_ms"], ref.t_ms, atol=1e-9)
    assert m["n"] == len(ok)


def _call(url, body=None, token=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **({"X-Bmiss-Token": token} if token else {})},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def test_server_api_token_edits_and_save(rec, tmp_path):
    from bmiss.review.server import ReviewServer

    rv = Review(tiny_decomposition(), rec, source_path=str(tmp_path / "in.npz"))
    out = tmp_path / "out.npz"
    srv = ReviewServer(rv, out_path=out).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert srv.url.startswith("http://127.0.0.1:") and "token=" in srv.url
        for path in ("/", "/app.js", "/api/state"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _call(base + path)
            assert e.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            _call(base + "/api/state?token=wrong")
        assert e.value.code == 403
        st, page = _call(srv.url)
        assert st == 200 and b"<canvas" in page and srv.token.encode() in page and b"http" not in page.split(b"<body>")[1]
        st, js = _call(f"{base}/app.js", token=srv.token)
        assert st == 200 and b"cdn" not in js.lower() and b"https://" not in js
        st, s = _call(f"{base}/api/state", token=srv.token)
        assert json.loads(s)["n_units"] == 4
        _, r = _call(f"{base}/api/edit", {"op": "merge", "unit": 2, "other": 3}, token=srv.token)
        assert json.loads(r)["state"]["n_units"] == 3
        with pytest.raises(urllib.error.HTTPError) as e:
            _call(f"{base}/api/edit", {"op": "mrege", "unit": 2}, token=srv.token)
        assert e.value.code == 400 and b"did you mean 'merge'" in e.value.read()
        _, r = _call(f"{base}/api/undo", {}, token=srv.token)
        assert json.loads(r)["state"]["n_units"] == 4
        _, r = _call(f"{base}/api/edit", {"op": "delete_unit", "unit": 3}, token=srv.token)
        _, r = _call(f"{base}/api/save", {}, token=srv.token)
        assert json.loads(r)["saved"] == str(out)
        assert io.load_decomposition(out).n_units == 3
    finally:
        srv.stop()


def test_cli_review_refuses_existing_output(tmp_path, rec, capsys):
    from bmiss.cli import main

    dec_p, rec_p = tmp_path / "d.npz", tmp_path / "r.npz"
    io.save_decomposition(dec_p, tiny_decomposition())
    io.save_recording(rec_p, rec)
    (tmp_path / "d.edited.npz").write_bytes(b"x")
    assert main(["review", str(dec_p), "--recording", str(rec_p), "--no-browser"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    other = tiny_recording(seed=5)
    rec2 = tmp_path / "r2.npz"
    io.save_recording(rec2, other)
    assert main(["review", str(dec_p), "--recording", str(rec2), "--no-browser", "--out", str(tmp_path / "o.npz")]) == 2
    assert "does not belong to" in capsys.readouterr().err


def test_review_function_serves_the_files(tmp_path, rec, capsys):
    from bmiss.review.server import default_out, review

    dec_p, rec_p = tmp_path / "d.npz", tmp_path / "r.npz"
    io.save_decomposition(dec_p, tiny_decomposition())
    io.save_recording(rec_p, rec)
    assert default_out(dec_p) == tmp_path / "d.edited.npz"
    srv = review(dec_p, rec_p, open_browser=False, block=False)
    try:
        assert srv.url in capsys.readouterr().out
        _, s = _call(srv.url.replace("/?token=", "/api/state?token="))
        assert json.loads(s)["n_units"] == 4
        _, r = _call(f"http://127.0.0.1:{srv.port}/api/save", {}, token=srv.token)
        assert json.loads(r)["saved"] == str(tmp_path / "d.edited.npz")
    finally:
        srv.stop()
