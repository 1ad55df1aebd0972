"""Sparse deconvolution stage: superimposed discharges, recovery of missed discharges, removal."""
from __future__ import annotations

import numpy as np
import pytest

from bmiss import metrics
from bmiss.deconvolve import (_MatchedFilter, _autocorr, _unit_ve, deconvolve, model_emg,
                              save_deconv_json)

FS = 2048.0


def _muap(rng, n_ch, T, centre, width):
    """A smooth biphasic waveform with a random spatial pattern: [n_ch, T] µV."""
    t = np.arange(T)
    wave = -np.gradient(np.exp(-0.5 * ((t - centre) / width) ** 2))
    wave /= np.abs(wave).max()
    gains = rng.normal(size=n_ch)
    return (gains[:, None] * wave[None, :] * 50.0).astype(np.float32)


def _train(rng, n, rate_hz, start=100):
    isi = FS / rate_hz * (1 + 0.1 * rng.normal(size=int(n / FS * rate_hz) + 10))
    t = start + np.cumsum(isi).astype(np.int64)
    return t[t < n - 100]


def make_superimposed():
    """Two units, eight discharges of B within 0-4 samples (<= 2 ms) of one of A's; the input
    trains miss all eight of B's and three isolated ones of A."""
    rng = np.random.default_rng(3)
    n, n_ch, T = int(6 * FS), 16, 48
    M = np.stack([_muap(rng, n_ch, T, 16, 3.0), _muap(rng, n_ch, T, 20, 4.0)])
    a = _train(rng, n, 11.0)
    b = _train(rng, n, 13.0, start=140)
    # make eight of B's discharges coincide with A's (B must stay outside A's and its own refractory)
    pick = rng.choice(np.arange(2, len(a) - 2), 8, replace=False)
    b = np.sort(np.concatenate([b[np.min(np.abs(b[:, None] - a[pick][None, :]), 1) > 80],
                                a[pick] + rng.integers(0, 5, 8)]))
    b = b[np.concatenate([[True], np.diff(b) > 60])]
    coincident = b[np.min(np.abs(b[:, None] - a[None, :]), 1) <= 4]
    assert len(coincident) >= 6
    X = model_emg(M, [a, b], n) + rng.normal(scale=4.0, size=(n_ch, n)).astype(np.float32)
    missing_a = rng.choice(np.setdiff1d(np.arange(len(a)), pick), 3, replace=False)
    inp_a = np.delete(a, missing_a)
    inp_b = np.setdiff1d(b, coincident)
    return dict(X=X, M=M, a=a, b=b, coincident=coincident, inp=[inp_a, inp_b], missing_a=a[missing_a])


@pytest.fixture(scope="module")
def superimposed():
    return make_superimposed()


def _near(x, ref, tol=1):
    return np.array([np.min(np.abs(np.asarray(ref) - v)) <= tol for v in np.asarray(x)], bool)


def test_superimposed_discharges_are_resolved(superimposed):
    d = superimposed
    res = deconvolve(d["X"], d["M"], d["inp"], FS)
    out_a, out_b = res.spikes
    # every discharge of B hidden under one of A's comes back, and A's isolated misses too
    assert _near(d["coincident"], out_b).all()
    assert _near(d["missing_a"], out_a).all()
    # nothing that is not a true discharge is added, to either unit
    assert _near(res.added[0], d["a"]).all() and _near(res.added[1], d["b"]).all()
    assert len(res.added[1]) == len(d["coincident"])
    assert metrics.rate_of_agreement(out_b, d["b"], FS)["roa"] == 1.0
    assert metrics.rate_of_agreement(out_a, d["a"], FS)["roa"] == 1.0
    assert res.ve_after > res.ve_before
    # the input trains really are what a filter stage misses: the coincident ones are absent
    assert not _near(d["coincident"], d["inp"][1]).any()


def test_false_discharges_are_removed_and_refractory_holds(superimposed):
    d = superimposed
    rng = np.random.default_rng(5)
    n = d["X"].shape[1]
    # false discharges where neither unit fires (at least 60 samples from any true one)
    cand = rng.integers(200, n - 200, 200)
    cand = cand[np.min(np.abs(cand[:, None] - np.concatenate([d["a"], d["b"]])[None, :]), 1) > 60][:6]
    inp = [np.sort(np.concatenate([d["a"], cand])), d["b"]]
    res = deconvolve(d["X"], d["M"], inp, FS, refractory_ms=20.0)
    assert set(res.removed[0].tolist()) == set(cand.tolist())
    assert len(res.removed[1]) == 0 and len(res.added[0]) == 0
    refr = int(round(0.020 * FS))
    for s in res.spikes:
        assert np.all(np.diff(s) >= refr)


def test_false_unit_is_left_unchanged(superimposed):
    """A unit with discharges at random times and their average as its template (what a
    spike-triggered average of a false unit looks like) carries no evidence: it is not edited."""
    d = superimposed
    rng = np.random.default_rng(9)
    X = d["X"]
    fake = np.sort(rng.choice(np.arange(100, X.shape[1] - 100), 60, replace=False))
    tpl = np.mean([X[:, t:t + d["M"].shape[2]] for t in fake], axis=0)
    M = np.stack([d["M"][0], tpl]).astype(np.float32)
    res = deconvolve(X, M, [d["inp"][0], fake], FS)
    assert res.frozen[1] and not res.frozen[0]
    np.testing.assert_array_equal(res.spikes[1], fake)
    assert _near(d["missing_a"], res.spikes[0]).all()


def test_unit_variance_explained_matches_brute_force():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(3, 4, 50)).astype(np.float32)
    N, onset = 3000, 7
    sp = [np.sort(rng.choice(np.arange(100, 2800), 40, replace=False)) for _ in range(3)]
    mf = _MatchedFilter(M, N, onset)
    Y = mf.synth(sp)
    np.testing.assert_allclose(Y, model_emg(M, sp, N, onset=onset), atol=1e-3)
    X = Y + rng.normal(size=Y.shape).astype(np.float32)
    R = X - Y
    ve = _unit_ve(X, R, mf(R), _autocorr(M), sp, [np.ones(len(s)) for s in sp])
    ex = np.sum(X.astype(np.float64) ** 2)
    brute = [(np.sum((R + model_emg(M[i:i + 1], [sp[i]], N, onset=onset)).astype(np.float64) ** 2)
              - np.sum(R.astype(np.float64) ** 2)) / ex for i in range(3)]
    np.testing.assert_allclose(ve, brute, rtol=1e-3)


def test_recovery_raises_roa_on_a_simulation(tmp_path):
    """~10 % of the true discharges of the visible units removed: deconvolution brings RoA back."""
    import bmiss

    rec = bmiss.simulate("biceps_brachii", duration_s=4.0, snr_db=20.0, seed=1, n_units=40,
                         muap_mode="expected", excitation="constant:0.25")
    E = np.sum(rec.true_muaps.astype(np.float64) ** 2, axis=(1, 2))
    active = np.array([len(s) >= 20 for s in rec.true_spikes])
    units = np.argsort(-np.where(active, E, -1.0))[:8]
    rng = np.random.default_rng(0)
    true = [rec.true_spikes[i] for i in units]
    inp = [np.sort(rng.choice(s, int(round(0.9 * len(s))), replace=False)) for s in true]
    res = deconvolve(rec.emg, rec.true_muaps[units], inp, rec.fs)
    before = np.array([metrics.rate_of_agreement(s, t, rec.fs)["roa"] for s, t in zip(inp, true)])
    after = np.array([metrics.rate_of_agreement(s, t, rec.fs)["roa"] for s, t in zip(res.spikes, true)])
    edited = ~res.frozen
    assert edited.sum() >= 4, res.detectability
    assert after[edited].mean() >= before[edited].mean() + 0.05
    assert np.all(after >= before - 0.01)
    assert res.ve_after > res.ve_before
    out = save_deconv_json(tmp_path / "deconv.json", res)
    import json

    doc = json.loads(out.read_text())
    assert doc["n_added"] == sum(len(a) for a in res.added) and len(doc["units"]) == len(units)
    assert len(doc["residual_psd"]["freq_hz"]) == len(doc["residual_psd"]["after_uv2_per_hz"])


def test_bad_input_is_rejected():
    X = np.zeros((4, 1000), np.float32)
    with pytest.raises(ValueError, match="one train per template"):
        deconvolve(X, np.ones((2, 4, 10), np.float32), [np.array([5])], FS)
    with pytest.raises(ValueError, match="n_channels=4"):
        deconvolve(X, np.ones((1, 3, 10), np.float32), [np.array([5])], FS)
    with pytest.raises(ValueError, match="onset"):
        deconvolve(X, np.ones((1, 4, 10), np.float32), [np.array([5])], FS, onset=10)


def test_recording_stage_keeps_units_without_a_template(superimposed):
    """The pipeline stage: STA templates, and a unit with too few discharges passes through."""
    from bmiss.deconvolve import deconvolve_recording

    d = superimposed
    few = d["b"][:4]
    res, tpl = deconvolve_recording(d["X"], [d["inp"][0], d["inp"][1], few], FS, band=None)
    assert tpl.n_units == 2 and len(res.spikes) == 3
    assert res.frozen[2] and res.settings["units_without_template"] == [2]
    np.testing.assert_array_equal(res.spikes[2], few)
    assert _near(d["missing_a"], res.spikes[0]).all()
    assert _near(res.added[0], d["a"]).all() and _near(res.added[1], d["b"]).all()
    assert res.summary()["units"][2]["frozen"]
