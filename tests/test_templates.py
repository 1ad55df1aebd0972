"""Spike-triggered MUAP estimation: accuracy against known MUAPs and a measured (not fixed) window."""
import numpy as np
import pytest

from bmiss.templates import bandpass_muaps, explained_variance, spike_triggered_muaps

FS = 2048.0


def _synthetic(seed=0, n_units=3, n_ch=16, dur_s=8.0, support=(0, 140), rate_hz=(30.0, 18.0, 12.0), noise_uv=2.0):
    """EMG from random smooth MUAPs with a known support [start, stop) samples after the discharge."""
    rng = np.random.default_rng(seed)
    N = int(dur_s * FS)
    T = support[1]
    t = np.arange(T)
    muaps = np.zeros((n_units, n_ch, T))
    for u in range(n_units):
        # a main biphasic wave and a late small "fibre-end" bump near the end of the support
        for c in range(n_ch):
            a = rng.normal(20, 5)
            muaps[u, c] += a * np.gradient(np.exp(-0.5 * ((t - 20 - c) / 4.0) ** 2))
            muaps[u, c] += 0.15 * a * np.exp(-0.5 * ((t - (T - 12)) / 3.0) ** 2)
        muaps[u, :, : support[0]] = 0
    spikes = []
    for u in range(n_units):
        isi = rng.normal(FS / rate_hz[u], 0.1 * FS / rate_hz[u], size=int(dur_s * rate_hz[u] * 1.5))
        s = np.cumsum(np.maximum(isi, 10)).astype(int) + 200
        spikes.append(s[s < N - 400])
    x = rng.normal(0, noise_uv, (n_ch, N))
    for u in range(n_units):
        for s in spikes[u]:
            x[:, s:s + T] += muaps[u]
    return x.astype(np.float32), spikes, muaps


def _aligned(true, tpl):
    """True MUAPs (starting at the discharge) placed into the template window."""
    out = np.zeros(tpl.muaps.shape)
    for j in range(out.shape[-1]):
        lag = tpl.window[0] + j
        if 0 <= lag < true.shape[-1]:
            out[..., j] = true[..., lag]
    return out


def test_sta_recovers_long_muaps_with_self_overlap():
    # 140-sample (68 ms) MUAPs at 30 Hz overlap the unit's own next discharge: a fixed 47-ms window
    # would cut the late component, and a plain average would carry the neighbour's MUAP.
    x, spikes, true = _synthetic(dur_s=20.0)
    tpl = spike_triggered_muaps(x, spikes, FS, band=None)
    assert tpl.muaps.shape[:2] == (3, 16)
    assert tpl.window[0] <= 0 and tpl.window[1] >= 140, tpl.window
    for u in range(3):
        e = (true[u] ** 2).sum(0)
        sup = np.flatnonzero(e > 0.01 * e.max())
        assert sup.max() > 125  # the late component is part of the true support
        assert tpl.support[u, 0] <= sup.min() and tpl.support[u, 1] > sup.max(), (u, tpl.support[u], sup[[0, -1]])
    assert not tpl.truncated.any()
    err = 1 - explained_variance(_aligned(true, tpl), tpl.muaps)
    assert (err < 0.1).all(), err
    # the noise estimate predicts the error of the average (within a factor 3)
    pred = (tpl.noise_std.astype(np.float64) ** 2).sum((1, 2)) / (true**2).sum((1, 2))
    assert np.all((err > pred / 3) & (err < pred * 3)), (err, pred)
    # the self-overlap correction matters here: without it the 30-Hz unit is clearly worse
    raw = spike_triggered_muaps(x, spikes, FS, band=None, deconvolve_self=False, window=tpl.window)
    err_raw = 1 - explained_variance(_aligned(true, raw), raw.muaps)
    assert err_raw[0] > 3 * err[0], (err_raw, err)


def test_window_follows_the_muap_not_a_constant():
    short = spike_triggered_muaps(*_synthetic(support=(0, 60))[:2], FS, band=None)
    long = spike_triggered_muaps(*_synthetic(support=(0, 140))[:2], FS, band=None)
    assert short.window[1] < 80 < 130 <= long.window[1], (short.window, long.window)


def test_band_pass_and_fixed_window():
    x, spikes, true = _synthetic(seed=1)
    tpl = spike_triggered_muaps(x, spikes, FS, band=(20, 500), window=(-10, 150))
    assert tpl.window == (-10, 150) and tpl.onset == 10 and tpl.muaps.shape[-1] == 160
    ref = bandpass_muaps(_aligned(true, tpl), FS, (20, 500))
    err = 1 - explained_variance(ref, tpl.muaps)
    assert (err < 0.15).all(), err


def test_bad_input_messages():
    x, spikes, _ = _synthetic(dur_s=2.0)
    with pytest.raises(ValueError, match="discharges"):
        spike_triggered_muaps(x, [spikes[0][:3]], FS)
    with pytest.raises(ValueError, match="window"):
        spike_triggered_muaps(x, spikes, FS, window=(5, 10))
    with pytest.raises(ValueError, match="n_channels"):
        spike_triggered_muaps(x[0], spikes, FS)


def test_sta_on_simulated_recording():
    import bmiss

    rec = bmiss.simulate("biceps_brachii", duration_s=6, snr_db=20, seed=1, n_units=6)
    keep = [i for i, s in enumerate(rec.true_spikes) if len(s) >= 15]
    tpl = spike_triggered_muaps(rec.emg, [rec.true_spikes[i] for i in keep], rec.fs, band=None)
    true = rec.true_muaps[keep]
    al = _aligned(true, tpl)
    err = 1 - explained_variance(al, tpl.muaps)
    snr = (tpl.muaps.astype(np.float64) ** 2).sum((1, 2)) / (tpl.noise_std.astype(np.float64) ** 2).sum((1, 2))
    good = snr > 10
    assert good.sum() >= 2, snr
    assert (err[good] < 0.2).all(), (err, snr)
    for j in np.flatnonzero(good):
        e = (true[j].astype(np.float64) ** 2).sum(0)
        sup = np.flatnonzero(e > 0.01 * e.max())
        # the measured support covers the true MUAP's support (including the fibre-end components)
        assert tpl.support[j, 0] <= sup.min() and tpl.support[j, 1] > sup.max(), (j, tpl.support[j], sup[[0, -1]])
