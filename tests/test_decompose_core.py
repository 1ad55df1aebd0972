"""Core decomposition: pre-processing, spike detection, oracle and classic CBSS.

Everything runs on a tiny synthetic recording built here with numpy (16 channels, 6 MUs,
5 s at 2048 Hz, 20 dB SNR).  The clean recording uses R=14 and the one with two bad
channels R=16, so both give 224 extended rows and the jitted kernels compile only once.
"""
from __future__ import annotations

import numpy as np
import pytest

from bmiss.metrics import rate_of_agreement
from bmiss.pipeline import decompose_cbss, decompose_oracle
from bmiss.pipeline.prepare import (
    bandpass,
    check_channels,
    extend,
    extended_gram,
    extension_factor,
    muap_to_ext,
    prepare,
    whiten,
)
from bmiss.pipeline.spikes import detect_spikes
from bmiss.quality import sil_from_heights
from bmiss.io import BmissFileError

from synth import FS, synth as _synth



def _roa(est, true, fs=FS):
    """RoA = TP/(TP+FP+FN) within ±0.5 ms after the best lag (±30 ms)."""
    return rate_of_agreement(est, true, fs, tol_ms=0.5, max_lag_ms=30.0)["roa"]


def _match(dec, true_spikes):
    """Best RoA per true unit, and per estimated unit the true unit it matches best."""
    R = np.array([[_roa(e, t) for e in dec.spikes] for t in true_spikes]).reshape(len(true_spikes), -1)
    return R


@pytest.fixture(scope="module")
def rec():
    return _synth()


@pytest.fixture(scope="module")
def cbss_result(rec):
    emg, muaps, spikes = rec
    return decompose_cbss(emg, FS, R=14, n_iter=20, progress=False, seed=3)


# ---------------------------------------------------------------------------- prepare
def test_extension_factor():
    assert extension_factor(64) == 16
    assert extension_factor(2000) == 1
    assert extension_factor(13) == 77


def test_extend_ordering_matches_muap_to_ext():
    rng = np.random.default_rng(0)
    n_ch, T, R, N, t0 = 5, 11, 7, 200, 60
    h = rng.standard_normal((n_ch, T))
    x = np.zeros((n_ch, N))
    x[:, t0:t0 + T] = h  # one discharge at t0
    X = extend(x, R)
    assert X.shape == (n_ch * R, N)
    assert X[3 * R + 2, 50] == np.float32(x[3, 48])  # row ch*R + r holds x[ch, t - r]
    for lag in range(-2, T + R + 2):
        b = muap_to_ext(h, R, lag)
        col = X[:, t0 + lag] if 0 <= t0 + lag < N else np.zeros(n_ch * R)
        np.testing.assert_allclose(col, b, atol=1e-6)
    assert np.all(muap_to_ext(h, R, T + R - 1) == 0) and np.any(muap_to_ext(h, R, T + R - 2) != 0)


def test_extended_gram_is_exact():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 300)).astype(np.float32)
    X = extend(x, 6).astype(np.float64)
    np.testing.assert_allclose(extended_gram(x, 6), X @ X.T, rtol=1e-10, atol=1e-9)


def test_whitening_identity_and_filter_identity(rec):
    emg, _, _ = rec
    prep = prepare(emg, FS, R=14)
    wh = prep.whitened
    z = np.asarray(wh.z, np.float64)
    assert wh.z.dtype == np.float32 and z.shape == (16 * 14, emg.shape[1])
    Cz = z @ z.T / z.shape[1] - np.outer(z.mean(1), z.mean(1))
    # ZCA with a floor: identity on the eigen-directions above the floor, d/floor below it
    target = (wh.eigvecs * np.minimum(1.0, wh.eigvals / wh.floor)) @ wh.eigvecs.T
    np.testing.assert_allclose(Cz, target, atol=2e-3)
    top = wh.eigvecs[:, wh.eigvals >= wh.floor]
    np.testing.assert_allclose(top.T @ Cz @ top, np.eye(top.shape[1]), atol=2e-3)
    assert np.isclose(wh.floor, wh.eigvals[: len(wh.eigvals) // 2].mean())
    # (W b)' z == b' C_reg^-1 (x_ext - mean)
    X = extend(bandpass(emg, FS) - bandpass(emg, FS).mean(1, keepdims=True), 14).astype(np.float64)
    b = np.random.default_rng(2).standard_normal(X.shape[0])
    Creg = (wh.eigvecs * np.maximum(wh.eigvals, wh.floor)) @ wh.eigvecs.T
    s1 = wh.whiten_vector(b) @ z
    s2 = np.linalg.solve(Creg, b) @ (X - wh.mean[:, None])
    np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-3 * np.abs(s2).max())
    # the generic whiten(x_ext) path agrees with the fast one used by prepare
    wh2 = whiten(X.astype(np.float32))
    np.testing.assert_allclose(np.asarray(wh2.z), np.asarray(wh.z), atol=2e-3)


def test_check_channels_flags_bad_channels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4000))
    x[1, 100] = np.nan
    x[2] = 0.5  # flat
    x[3] = np.clip(x[3] * 5, -2, 2)  # saturated: many samples at the max |x|
    x[4] *= 50  # far louder than the others
    good, report = check_channels(x, FS)
    assert list(np.flatnonzero(~good)) == [1, 2, 3, 4]
    text = "\n".join(report)
    for word in ("NaN", "flat", "saturated", "RMS"):
        assert word in text
    with pytest.raises(BmissFileError, match="NaN"):
        y = x.copy()
        y[:6, 10] = np.nan
        check_channels(y, FS)
    with pytest.raises(BmissFileError, match="at least 2"):
        check_channels(np.vstack([x[:1], np.zeros((3, 4000))]), FS)


def test_too_short_recording_is_a_clear_error():
    x = np.random.default_rng(4).standard_normal((16, 600)).astype(np.float32)
    with pytest.raises(BmissFileError, match="too short"):
        prepare(x, FS)  # R = 62 -> needs 992 samples


# ---------------------------------------------------------------------------- spikes
def test_detect_spikes_and_sil():
    rng = np.random.default_rng(5)
    N = 8192
    true = np.cumsum(rng.normal(160, 20, 60)).astype(int)
    true = true[true < N - 10]
    s = rng.normal(0, 0.2, N)
    s[true] += 3.0 + rng.normal(0, 0.2, len(true))
    sp, silv = detect_spikes(-s, FS)  # negative skew: flipped automatically
    np.testing.assert_array_equal(sp, true)
    assert silv > 0.9
    # SIL definition on a toy split
    h = np.array([1.0, 1.2, 0.9, 10.0, 11.0])
    spk = np.array([False, False, False, True, True])
    W = (10 - 10.5) ** 2 + (11 - 10.5) ** 2
    B = (10 - 31 / 30) ** 2 + (11 - 31 / 30) ** 2
    assert np.isclose(sil_from_heights(h, spk), (B - W) / max(W, B))


# ---------------------------------------------------------------------------- oracle
def test_oracle_finds_every_unit(rec):
    emg, muaps, spikes = rec
    dec = decompose_oracle(emg, FS, muaps, R=14)
    assert dec.n_units == len(spikes) and dec.meta["true_index"] == list(range(len(spikes)))
    for j in range(len(spikes)):
        assert _roa(dec.spikes[j], spikes[j]) >= 0.95, j
    assert np.all(dec.sil > 0.9)
    assert dec.sources.shape == (len(spikes), emg.shape[1])


# ---------------------------------------------------------------------------- cbss
def test_cbss_finds_most_units_without_duplicates(rec, cbss_result):
    emg, muaps, spikes = rec
    dec = cbss_result
    assert dec.method == "cbss"
    R = _match(dec, spikes)
    found = int((R.max(axis=1) >= 0.9).sum())
    assert found >= int(np.ceil(0.8 * len(spikes))), R.round(2)
    # no duplicates: every estimated unit matches a different true unit (and none is junk)
    best_true = R.argmax(axis=0)
    assert len(set(best_true)) == dec.n_units, R.round(2)
    assert np.all(R.max(axis=0) >= 0.5), R.round(2)
    assert np.all(dec.sil >= 0.9)
    assert dec.filters.shape == (dec.n_units, 16 * 14)
    assert dec.sources.shape == (dec.n_units, emg.shape[1])
    for k in ("settings", "timing_s", "channels_used", "excluded_channels"):
        assert k in dec.meta
    assert dec.meta["channels_used"] == list(range(16)) and dec.meta["excluded_channels"] == []
    # normalised sources: mean 1 at the discharges
    for i in range(dec.n_units):
        assert np.isclose(dec.sources[i][dec.spikes[i]].mean(), 1.0, atol=1e-3)


def test_cbss_is_reproducible(rec, cbss_result):
    emg, _, _ = rec
    dec2 = decompose_cbss(emg, FS, R=14, n_iter=20, progress=False, seed=3)
    assert dec2.n_units == cbss_result.n_units
    for a, b in zip(dec2.spikes, cbss_result.spikes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dec2.filters, cbss_result.filters)


def test_cbss_excludes_bad_channels(rec):
    emg, muaps, spikes = rec
    bad = emg.copy()
    bad[3, 1000:1010] = np.nan
    bad[9] = 0.0
    dec = decompose_cbss(bad, FS, R=16, n_iter=20, progress=False)
    assert dec.meta["channels_used"] == [c for c in range(16) if c not in (3, 9)]
    assert len(dec.meta["excluded_channels"]) == 2
    R = _match(dec, spikes)
    assert int((R.max(axis=1) >= 0.9).sum()) >= int(np.ceil(0.8 * len(spikes))), R.round(2)
