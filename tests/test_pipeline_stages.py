"""Each shared pipeline stage checked against its rule on a tiny synthetic mixture (tests/synth.py)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bmiss import quality
from bmiss.metrics import rate_of_agreement
from bmiss.pipeline import refine, settings
from bmiss.pipeline.accept import Unit, verdict
from bmiss.pipeline.dedupe import duplicates_of, merge
from bmiss.pipeline.finalize import onset_shift, shift_source
from bmiss.pipeline.peel import sta_best_lag, subtract, window_starts
from bmiss.pipeline.prepare import prepare
from bmiss.pipeline.proposers.oracle import oracle_filters
from bmiss.pipeline.run import workspace
from bmiss.pipeline.spikes import _cov_isi_padded, detect_core

from synth import FS, synth


@pytest.fixture(scope="module")
def case():
    emg, muaps, spikes = synth()
    prep = prepare(emg, FS, R=14)
    ws = workspace(prep, settings.Rules())
    return emg, muaps, spikes, prep, ws


def _oracle_w(prep, muap):
    F, lags, pad = oracle_filters(prep, muap, n_lags=1)
    return F[0], int(pad - lags[0])


# ---------------------------------------------------------------------------- quality
def test_ms_to_samples_rounds_half_up_and_scales_with_fs():
    assert quality.ms_to_samples(0.5, 2048) == 1
    assert quality.ms_to_samples(20, 2048) == 41  # 40.96
    assert quality.ms_to_samples(20, 10240) == 205  # 204.8, 5x the rate -> 5x the samples
    assert quality.ms_to_samples(0.5, 1000) == 1  # 0.5 rounds up, not to even
    assert quality.ms_to_samples(2.5, 1000) == 3
    for fs in (2048.0, 4096.0, 10240.0):  # the same rule in ms gives the same duration at every fs
        assert abs(quality.min_distance_samples(fs, 20.0) / fs * 1000 - 20.0) < 1000 / fs


def test_sil_given_spikes_equals_the_decomposers_sil(case):
    _, muaps, spikes, prep, ws = case
    w, _ = _oracle_w(prep, muaps[2])
    s = np.asarray(ws.zt @ jnp.asarray(w))
    det = detect_core(jnp.asarray(s), d=ws.d, flip=False)
    n = int(det["n_spikes"])
    sp = np.asarray(det["spikes"][:n])
    assert n > 20
    assert abs(quality.sil(s, sp, FS) - float(det["sil"])) < 1e-4
    # device CoV of ISI is the numpy definition
    assert abs(float(_cov_isi_padded(det["spikes"], det["n_spikes"])) - quality.cov_isi(sp)) < 1e-5


def test_shared_fraction_finds_the_best_lag():
    rng = np.random.default_rng(0)
    a = np.cumsum(rng.integers(150, 250, 60))
    assert quality.shared_fraction(a, a + 17, tol=1, max_lag=30) == 1.0
    assert quality.shared_fraction(a, a + 17, tol=1, max_lag=10) < 0.2  # lag out of reach
    b = np.sort(np.concatenate([a[:30] + 1, rng.integers(0, a[-1], 40)]))
    assert 0.45 <= quality.shared_fraction(a, b, tol=1, max_lag=5) <= 0.7


# ---------------------------------------------------------------------------- accept / dedupe
def test_accept_rule():
    r = settings.Rules(sil_threshold=0.9, min_spikes=10)
    assert verdict(10, 0.9, r) == "accepted"
    assert verdict(9, 0.99, r) == "few_spikes"
    assert verdict(50, 0.89, r) == "low_sil"
    assert verdict(0, 0.0, settings.Rules(accept_all=True)) == "accepted"
    assert verdict(50, 0.95, settings.Rules(max_cov=0.5), cov=0.6) == "irregular"
    assert verdict(50, 0.95, settings.Rules(max_cov=0.5), cov=0.4) == "accepted"
    assert verdict(50, 0.95, r, cov=5.0) == "accepted"  # no limit by default (cbss)


def _unit(spikes, sil, cov, cand):
    return Unit(w=np.zeros(3), source=np.zeros(3), peaks=np.asarray(spikes), sil=sil, cov=cov, cand=cand,
                spikes=np.asarray(spikes), info={"cand": cand})


def test_dedupe_keep_rules():
    rng = np.random.default_rng(1)
    a = np.cumsum(rng.integers(150, 250, 50))
    u0, u1 = _unit(a, 0.95, 0.20, 0), _unit(a + 20, 0.91, 0.10, 1)  # same unit, 10 ms later
    other = _unit(np.cumsum(rng.integers(150, 250, 50)) + 7, 0.99, 0.1, 2)
    r = settings.Rules()
    assert duplicates_of(u1, [u0, other], r, FS) == [0]
    assert duplicates_of(u1, [u0], settings.Rules(dedupe=False), FS) == []
    kept, best = merge(u1, [u0, other], [0], settings.Rules(keep="cov"))
    ids = [id(u) for u in kept]
    assert best is u1 and id(other) in ids and id(u0) not in ids and best.absorbed == [{"cand": 0}]
    _, best = merge(_unit(a + 20, 0.91, 0.10, 1), [u0], [0], settings.Rules(keep="sil"))
    assert best is u0


# ---------------------------------------------------------------------------- refine
def test_refinement_keeps_the_lowest_cov_iterate(case):
    _, muaps, spikes, prep, ws = case
    w, _ = _oracle_w(prep, muaps[0])
    rng = np.random.default_rng(2)
    w0 = w + 0.6 * rng.standard_normal(w.shape).astype(np.float32) / np.sqrt(len(w))
    w0 /= np.linalg.norm(w0)

    def run(rmax):
        st = refine.new_pool(1, ws.n, ws.N, ws.P)
        st["W"][0], st["phase"][0] = w0, refine.REFINE
        out, _ = refine.run_pool(st, ws.zt, jnp.zeros((1, ws.n)), jnp.float32(0), max_refine_iter=rmax, d=ws.d,
                                 flip=False)
        return {k: np.asarray(v) for k, v in out.items()}

    first, ref = run(0), run(10)
    assert first["phase"][0] == ref["phase"][0] == refine.DONE
    assert first["rk"][0] == 1 and ref["rk"][0] > 1
    assert ref["best_cov"][0] <= first["best_cov"][0]
    sp = lambda o: o["best_spk"][0][: o["best_n"][0]]  # noqa: E731
    roa0 = rate_of_agreement(sp(first), spikes[0], FS, max_lag_ms=30)["roa"]
    roa1 = rate_of_agreement(sp(ref), spikes[0], FS, max_lag_ms=30)["roa"]
    assert roa1 >= roa0 and roa1 > 0.9


# ---------------------------------------------------------------------------- peel
def test_peel_removes_the_unit_at_every_lag_and_leaves_others(case):
    _, muaps, spikes, prep, _ = case
    ws = workspace(prep, settings.Rules())  # own copy: peel works in place
    wB, _ = _oracle_w(prep, muaps[1])

    def sil_of(w):
        det = detect_core(ws.zt @ jnp.asarray(w), d=ws.d, flip=False)
        return float(det["sil"])

    silB = sil_of(wB)
    wA, shiftA = _oracle_w(prep, muaps[0])
    peaks = np.asarray(spikes[0]) - shiftA  # where unit A's source peaks
    inner = peaks[(peaks >= ws.peel_half) & (peaks < ws.N - ws.peel_half)]
    amp_before = float(np.mean(np.asarray(ws.zt @ jnp.asarray(wA))[inner]))
    starts, n_ok = window_starts(peaks, ws.N, ws.peel_half, ws.P)
    sta, *_ = sta_best_lag(ws.zt, starts, n_ok, half=ws.peel_half, d=ws.d)
    e_before = float(jnp.sum(sta * sta, axis=1).max())
    ws.zt, ws.act = subtract(ws.zt, starts, n_ok, ws.act, sta, jnp.float32(0.0))
    sta2, *_ = sta_best_lag(ws.zt, starts, n_ok, half=ws.peel_half, d=ws.d)
    # every lag of the window: what is left of A's average is what overlapping windows of
    # neighbouring discharges put back (ISI < window), a few % of the peak energy
    e_after = np.asarray(jnp.sum(sta2 * sta2, axis=1))
    print("peel residual energy / peak", e_after.max() / e_before)
    assert e_after.max() < 0.05 * e_before
    # A's own filter sees nothing at A's discharges any more
    assert abs(float(np.mean(np.asarray(ws.zt @ jnp.asarray(wA))[inner]))) < 0.1 * amp_before
    assert abs(sil_of(wB) - silB) < 0.03  # B is untouched
    np.testing.assert_allclose(np.asarray(ws.act), np.asarray(jnp.sum(ws.zt * ws.zt, axis=1)), rtol=1e-4, atol=1e-3)


def test_peel_floor_leaves_noise_lags_alone(case):
    _, muaps, spikes, prep, _ = case
    ws = workspace(prep, settings.Rules())
    rng = np.random.default_rng(3)
    fake = np.sort(rng.choice(np.arange(200, ws.N - 200), 12, replace=False))  # no unit fires here
    starts, n_ok = window_starts(fake, ws.N, ws.peel_half, ws.P)
    sta, *_ = sta_best_lag(ws.zt, starts, n_ok, half=ws.peel_half, d=ws.d)
    z0 = np.asarray(ws.zt).copy()
    ws.zt, ws.act = subtract(ws.zt, starts, n_ok, ws.act, sta, jnp.float32(3.0))
    changed = np.abs(np.asarray(ws.zt) - z0).max(axis=1) > 0
    assert changed.mean() < 0.02  # at most a few lags of a noise average stand above 3x its floor


# ---------------------------------------------------------------------------- finalize
def test_onset_alignment_puts_discharges_on_the_firing(case):
    _, muaps, spikes, prep, ws = case
    w, _ = _oracle_w(prep, muaps[3])
    det = detect_core(ws.zt @ jnp.asarray(w), d=ws.d, flip=False)
    peaks = np.asarray(det["spikes"][: int(det["n_spikes"])], np.int64)
    k = onset_shift(prep.x, peaks, ws.peel_half)
    r = rate_of_agreement(peaks + k, spikes[3], FS, tol_ms=0.5, max_lag_ms=30)
    # the convention: discharge = onset of the MUAP (first sample above 10 % of its peak energy,
    # walking back from the peak); for the true MUAP that onset lies `on` samples after the firing
    from bmiss.pipeline.prepare import bandpass

    h = bandpass(np.pad(muaps[3].astype(np.float64), ((0, 0), (50, 50))), FS)
    e = (h ** 2).sum(0)
    on = int(np.argmax(e))
    while on > 0 and e[on - 1] > 0.1 * e.max():
        on -= 1
    on -= 50
    assert r["roa"] > 0.9 and abs(r["lag"] + on) <= 2, (r["lag"], on)
    s = np.zeros(50)
    s[30] = 1.0
    assert np.argmax(shift_source(s, 5)) == 25 and np.argmax(shift_source(s, -5)) == 35


# ---------------------------------------------------------------------------- settings
def test_settings_resolve_routes_and_rejects():
    rules, fi = settings.resolve("cbss", n_iter=7, sil_threshold=0.8, R=12)
    assert fi.n_iter == 7 and rules.sil_threshold == 0.8 and rules.R == 12
    rules, ms = settings.resolve("bmiss", n_rounds=2)
    assert ms.n_rounds == 2 and rules.keep == "sil" and rules.deconvolve.enabled
    assert not settings.Rules().deconvolve.enabled
    with pytest.raises(settings.SettingsError, match="did you mean 'n_iter'"):
        settings.resolve("cbss", n_itr=3)
    with pytest.raises(ValueError, match="contrast"):
        settings.resolve("cbss", contrast="cubic")
    d = settings.as_dict(settings.Rules())
    assert d["band"] == [20.0, 500.0] and d["keep"] == "cov" and d["deconvolve"]["enabled"] is False


def test_nested_settings_reached_by_dotted_keys_and_recorded():
    rules, ms = settings.resolve("bmiss", **{"subject_fit.n_starts": 2, "unit_fit.enabled": False,
                                            "deconvolve.refractory_ms": 25.0, "blind.n_iter": 12})
    assert ms.subject_fit.n_starts == 2 and ms.subject_fit.fix == ("fat_mm", "skin_mm")  # the rest kept
    assert not ms.unit_fit.enabled and ms.blind.n_iter == 12 and rules.deconvolve.refractory_ms == 25.0
    assert rules.deconvolve.enabled  # bmiss's default kept under the dotted change
    d = settings.as_dict(ms)
    assert d["subject_fit"]["n_starts"] == 2 and d["unit_fit"]["enabled"] is False
    # ``group=false`` is short for ``group.enabled=false``, and keeps the group's other values
    rules, ms = settings.resolve("bmiss", deconvolve=False, subject_fit=False)
    assert not rules.deconvolve.enabled and not ms.subject_fit.enabled and ms.subject_fit.fix == ("fat_mm", "skin_mm")
    assert settings.ModelSettings().subject_fit.fix == ("fat_mm", "skin_mm")  # the measured default
    _, ms = settings.resolve("bmiss", **settings.parse_settings("bmiss", ["subject_fit.fix=anisotropy,fat_mm"]))
    assert ms.subject_fit.fix == ("anisotropy", "fat_mm")
    _, ms = settings.resolve("bmiss", **settings.parse_settings("bmiss", ["subject_fit.fix=none"]))
    assert ms.subject_fit.fix == ()
    with pytest.raises(settings.SettingsError, match="fatt"):
        settings.resolve("bmiss", **{"subject_fit.fix": ("fatt",)})
    with pytest.raises(settings.SettingsError, match="did you mean 'n_starts'"):
        settings.resolve("bmiss", **{"subject_fit.n_startz": 2})
    with pytest.raises(settings.SettingsError, match="patience"):
        settings.resolve("bmiss", patience=0)


@pytest.mark.parametrize("method, item, expect", [
    ("bmiss", "deconvolve=false", {"deconvolve": False}),
    ("bmiss", "peel=no", {"peel": False}),
    ("cbss", "dedupe=off", {"dedupe": False}),
    ("cbss", "band=20,450", {"band": (20.0, 450.0)}),
    ("cbss", "band=(20, 450)", {"band": (20.0, 450.0)}),
    ("cbss", "max_cov=none", {"max_cov": None}),
    ("bmiss", "subject_fit.n_starts=2", {"subject_fit.n_starts": 2}),
])
def test_setting_text_is_parsed_by_the_field_type(method, item, expect):
    kw = settings.parse_settings(method, [item])
    assert kw == expect
    settings.resolve(method, **kw)  # and accepted


@pytest.mark.parametrize("method, item, msg", [
    ("bmiss", "min_spikes=-1", "min_spikes.*range"),
    ("cbss", "n_iter=1.5", "n_iter.*integer"),
    ("cbss", "max_fp_iter=0", "max_fp_iter.*range"),
    ("cbss", "sil_threshold=5", "sil_threshold.*range"),
    ("cbss", "sil_threshold=nan", "sil_threshold.*finite"),
    ("cbss", "sil_threshold=abc", "sil_threshold.*number"),
    ("cbss", "min_distance_ms=nan", "min_distance_ms.*finite"),
    ("cbss", "R=abc", "R.*integer"),
    ("cbss", "band=(500,20)", "low < high"),
    ("bmiss", "peel=maybe", "true or false"),
    ("bmiss", "subject_fit=2", "true or false"),
    ("cbss", "nonsense=1", "unknown setting"),
    ("cbss", "sil_threshold", "KEY=VALUE"),
])
def test_bad_setting_text_is_refused_with_the_allowed_values(method, item, msg):
    with pytest.raises(settings.SettingsError, match=msg):
        settings.resolve(method, **settings.parse_settings(method, [item]))


def test_api_settings_are_type_checked():
    for kw, msg in (({"deconvolve": "false"}, "true or false"), ({"peel": "no"}, "true or false"), ({"n_iter": "abc"}, "integer"),
                    ({"sil_threshold": 5}, "range"), ({"min_spikes": True}, "integer")):
        with pytest.raises(settings.SettingsError, match=msg):
            settings.resolve("cbss", **kw)


def test_band_is_recorded_as_used():
    from bmiss.pipeline.prepare import prepare

    x = np.random.default_rng(0).standard_normal((4, 4096)).astype(np.float32)
    prep = prepare(x, 2048.0, R=2, band=(20.0, 5000.0))
    assert prep.band == (20.0, 0.475 * 2048.0)  # the upper corner clipped at 0.95 x Nyquist, and said so


def test_decomposition_records_the_band_as_applied():
    from synth import synth

    emg, _, _ = synth(n_ch=16, n_mu=3, dur=3.0, seed=4)
    from bmiss.pipeline import decompose_cbss

    dec = decompose_cbss(emg, 2048.0, n_iter=2, R=8, band=(20.0, 5000.0), progress=False)
    assert dec.meta["settings"]["rules"]["band"] == [20.0, 0.475 * 2048.0]
