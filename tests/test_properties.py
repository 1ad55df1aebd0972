"""The unit-properties stage: the amortized posterior is attached to every unit with a usable
average, and ``method="posterior"`` reports its mean/std (no subject model needed)."""
from dataclasses import replace

import numpy as np
import pytest

import bmiss
from bmiss import anatomy
from bmiss.conductor import PARAM_NAMES
from bmiss.fitting import UnitFitSettings
from bmiss.pipeline.accept import Unit
from bmiss.pipeline.properties import unit_properties


@pytest.fixture(scope="module")
def case():
    a = anatomy.load("tibialis_anterior").with_grid(rows=6, cols=5, ied_mm=8.0)
    a = replace(a, muscle=replace(a.muscle, thickness_mm=10.0, width_mm=40.0),
                pool=replace(a.pool, fibres_min=150, fibres_max=600))
    rec = bmiss.simulate(a, duration_s=4.0, snr_db=20.0, seed=3, n_units=8, muap_mode="fibres",
                         excitation="constant:0.9")
    units = [Unit(w=np.zeros(1, np.float32), source=np.zeros(rec.n_samples, np.float32), peaks=np.asarray(s),
                  sil=1.0, cov=0.1, cand=i, spikes=np.asarray(s, np.int64))
             for i, s in enumerate(rec.true_spikes)]
    return a, rec, units


def test_posterior_properties_without_a_subject_model(case):
    a, rec, units = case
    extra, meta = unit_properties(rec, units, None, UnitFitSettings(method="posterior"), anatomy=a)
    assert extra["params"].shape == (len(units), 6) and extra["param_names"] == PARAM_NAMES
    assert meta["posterior"]["n_units"] >= 3, meta["posterior"]
    with_post = [i for i, m in enumerate(meta["units"]) if "posterior" in m]
    assert len(with_post) == meta["posterior"]["n_units"]
    for i in with_post:
        p = meta["units"][i]["posterior"]
        for n in PARAM_NAMES:  # ordered quantiles around the mean
            assert p["q0.025"][n] <= p["q0.16"][n] <= p["mean"][n] + 1e-6 and p["mean"][n] <= p["q0.975"][n] + 1e-6
        if p["in_domain"]:
            assert meta["units"][i]["params_from"] == "amortized posterior"
            np.testing.assert_allclose(extra["params"][i], [p["mean"][n] for n in PARAM_NAMES], rtol=1e-5)
            # its intervals are the posterior's quantiles (2.5, 16, 84, 97.5 %)
            q = [[p[f"q{k}"][n] for k in ("0.025", "0.16", "0.84", "0.975")] for n in PARAM_NAMES]
            np.testing.assert_allclose(extra["param_interval"][i], q, rtol=1e-5)
    assert extra["param_interval"].shape == (len(units), 6, 4)
    none = [i for i, m in enumerate(meta["units"]) if m["params_from"] == "none"]
    assert np.isnan(extra["param_interval"][none]).all()
    # against the truth: the 95 % intervals hold most of the true values (calibrated on held-out simulations)
    inside = [p["q0.025"][n] <= t <= p["q0.975"][n]
              for i in with_post for p in [meta["units"][i]["posterior"]]
              for n, t in zip(PARAM_NAMES, rec.true_params[i])]
    assert np.mean(inside) >= 0.6, np.mean(inside)


def test_posterior_can_be_turned_off(case):
    a, rec, units = case
    _, meta = unit_properties(rec, units, None, UnitFitSettings(posterior=False), anatomy=a)
    assert "posterior" not in meta and all("posterior" not in m for m in meta["units"])


def test_model_check_names_the_properties_the_posterior_rules_out():
    from bmiss.pipeline.properties import model_check

    mean, sd = np.array([10.0, 0.0, 5.0, 0.0, 4.0, 100.0]), np.array([2.0, 3.0, 0.5, 5.0, 0.3, 20.0])
    assert model_check(mean + 2.9 * sd, mean, sd, 3.0) == []
    assert model_check(mean + np.r_[0, 0, 0, 0, 1.0, -70.0], mean, sd, 3.0) == ["cv_m_s", "length_mm"]
    assert model_check(mean + 10 * sd, mean, sd, None) == []
    assert model_check(np.full(6, np.nan), mean, sd, 3.0) == []  # nothing fitted: nothing to check


def test_posterior_reads_the_whole_search_window_and_says_where_the_grid_is(case, monkeypatch):
    """The network reads a fixed span around each MUAP's peak: the averages it gets cover the whole
    search window, not the union of the units' supports (short MUAPs left it mostly zeros)."""
    from bmiss import posterior
    from bmiss.templates import search_bounds

    a, rec, units = case
    seen = {}
    real = posterior.unit_properties

    def spy(tpl, *args, **kw):
        seen["window"] = tuple(tpl.window)
        return real(tpl, *args, **kw)

    monkeypatch.setattr(posterior, "unit_properties", spy)
    _, meta = unit_properties(rec, units[:2], None, UnitFitSettings(method="posterior"), anatomy=a)
    pre, post = search_bounds(rec.fs)
    assert seen["window"] == (-pre, post)
    g = meta["posterior"]["grid_placement"]
    assert g["anatomy"] == a.name and g["grid_centre_z_mm"] == pytest.approx(a.grid.centre_z_mm)


def test_posterior_placement_follows_the_subject_fit_only_where_it_explains_the_muaps():
    from types import SimpleNamespace

    from bmiss.pipeline.run import _placement
    from bmiss.pipeline.settings import ModelSettings

    s = ModelSettings()
    base, fitted = object(), object()
    subj = lambda ev: SimpleNamespace(anatomy=fitted, fit=object(), meta={"overall_explained_variance": ev})  # noqa: E731
    assert _placement(subj(s.subject_fit.min_ev + 0.01), base, s) is fitted
    assert _placement(subj(s.subject_fit.min_ev - 0.01), base, s) is base  # a poor fit can move the grid far
    assert _placement(SimpleNamespace(anatomy=base, fit=None, meta={}), base, s) is base


def test_posterior_averages_are_the_plain_averages_over_the_whole_window(case):
    from bmiss import posterior
    from bmiss.templates import search_bounds, spike_triggered_muaps

    _, rec, _ = case
    sp = rec.true_spikes[:3]
    full = posterior.averages(rec.emg, sp, rec.fs, min_discharges=5)
    cut = spike_triggered_muaps(rec.emg, sp, rec.fs, min_discharges=5)  # the union of the supports
    pre, post = search_bounds(rec.fs)
    assert full.window == (-pre, post) and full.muaps.shape[-1] == pre + post
    lo = cut.window[0] + pre  # the cut window's samples inside the whole one: the same averages
    np.testing.assert_allclose(full.muaps[..., lo:lo + cut.muaps.shape[-1]], cut.muaps, rtol=1e-5, atol=1e-6)
