"""bmiss on a recording its model did not make: per-fibre MUAPs, fat 1.5 mm thicker than the
anatomy file says and a grid turned 8 degrees to the fibres (no inverse crime)."""
from dataclasses import replace

import numpy as np
import pytest

import bmiss
from bmiss import anatomy, api, metrics
from bmiss.conductor import PARAM_NAMES
from bmiss.fitting import UnitFitSettings

FAST = dict(n_probe=256, n_starts=8, n_steps=20, n_rounds=1)


@pytest.fixture(scope="module")
def case():
    a = anatomy.load("tibialis_anterior").with_grid(rows=6, cols=5, ied_mm=8.0)
    a = replace(a, muscle=replace(a.muscle, thickness_mm=10.0, width_mm=40.0),
                pool=replace(a.pool, fibres_min=150, fibres_max=600))
    rec = bmiss.simulate(a, duration_s=4.0, snr_db=20.0, seed=3, n_units=8, muap_mode="fibres",
                         excitation="constant:0.9",
                         tissue_overrides={"fat_thickness_mm": a.layers.fat_thickness_mm + 1.5},
                         grid_rotation_deg=8.0)
    cbss = api.decompose(rec, "cbss", progress=False)
    return a, rec, cbss


def _found(dec, rec):
    rep = metrics.evaluate(dec, rec)
    return {r["true"] for r in rep["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= 0.9}, rep


def test_simulation_hides_the_mismatch_from_the_inversion(case):
    a, rec, _ = case
    import tomllib

    nominal = tomllib.loads(rec.meta["anatomy_toml"])
    assert abs(nominal["layers"]["fat_thickness_mm"] - a.layers.fat_thickness_mm) < 1e-9  # what bmiss reads
    assert rec.meta["hidden_truth"]  # what it does not


def test_bmiss_finds_every_unit_cbss_finds(case):
    a, rec, cbss = case
    f_cbss, rep_cbss = _found(cbss, rec)
    assert len(f_cbss) >= 2  # a non-trivial case
    # min_ev = 1 forces the refit with fat and skin free (no fit explains all), so both fits of the subject run
    # model_search_min_ev = 0: the model search runs whatever the fit explains, so every stage runs
    dec = bmiss.decompose(rec, "bmiss", progress=False, seed=0, **{"subject_fit.min_ev": 1.0},
                          model_search_min_ev=0.0, **FAST)
    f_bmiss, rep = _found(dec, rec)
    assert f_cbss <= f_bmiss, (f_cbss, f_bmiss)
    assert rep["summary"]["n_false"] <= rep_cbss["summary"]["n_false"]
    assert dec.meta["deconvolved"] is True
    assert dec.meta["settings"]["phases"][1]["proposer"] == "ModelProposer"
    # every stage of the default bmiss ran and was timed under its own name, in data-flow order
    stages = ["prepare", "blind_search", "subject_fit", "model_search", "deconvolution", "unit_properties",
              "finalize"]
    assert dec.meta["settings"]["stages"] == stages
    assert [k for k in dec.meta["timing_s"] if k in stages] == stages
    assert dec.meta["settings"]["phases"][1]["settings"]["subject_fit"]["min_ev"] == 1.0
    assert dec.meta["settings"]["model_search"]["ran"] is True
    # the network makes the search's MUAPs by default; a subject outside its domain gets the conductor, and why
    fm = dec.meta["forward_model"]
    assert fm == "surrogate" or fm.startswith("conductor (the surrogate refused this anatomy: "), fm
    if fm == "surrogate":  # each model-phase unit says whether the network extrapolated where it was found
        assert all(isinstance(m["in_network_domain"], bool) for m in dec.meta["units"] if m["phase"] == 1)
    sm = dec.meta["subject_model"]
    assert "subject" in sm, sm.get("error")  # this case has enough blind units: the fit must run
    # fat and skin held: the network fits the subject; the free refit (min_ev 1.0 here) uses the conductor
    # (subject_fit.free_network=false: the network's free fits were less accurate), and says why
    assert sm["forward_model"] == ("surrogate" if r_kept_held(sm) else
                                   "conductor (fat and skin are fitted here: their ranges reach past the network's "
                                   "fat 1-8 mm / skin 0.5-2 mm)"), sm["forward_model"]
    # where the conductor's free fit was kept, the unit fits in it run through the network (or say why not)
    uf = sm["unit_forward_model"]
    assert (uf == "surrogate") if r_kept_held(sm) else (
        uf == "surrogate (in the subject the conductor fitted)" or uf.startswith("conductor (the fitted ")), uf
    r = sm["refit_free"]
    # the free fit is kept only where it explains min_gain more: two more parameters always explain a little more
    free_better = r["free_explained_variance"] >= r["held_explained_variance"] + r["min_gain"]
    assert r["kept"] == ("free" if free_better else "held") and r["min_gain"] > 0
    assert sm["overall_explained_variance"] == r["free_explained_variance" if free_better else "held_explained_variance"]
    # every unit with a usable average gets properties from its own MUAP
    assert dec.meta["unit_fit"]["n_fitted"] >= 1, dec.meta["unit_fit"]
    checked = [i for i, m in enumerate(dec.meta["units"]) if "the unit fit disagreed" in m["params_from"]]
    assert sum(m["params_from"] == "unit fit under the subject model" for m in dec.meta["units"]) + len(checked) \
        == dec.meta["unit_fit"]["n_fitted"]
    for i in checked:  # the model check hands a unit whose fit its posterior rules out to the posterior
        m = dec.meta["units"][i]
        np.testing.assert_allclose(dec.params[i], [m["posterior"]["mean"][n] for n in PARAM_NAMES], rtol=1e-5)
        assert m["std_from"] == "posterior" and m["unit_fit"] == "fitted"
    assert dec.params.shape == (dec.n_units, 6) and dec.param_names == PARAM_NAMES
    # a fitted unit's std adds the posterior's spread (model mismatch) to the fit's Laplace width
    for i, m in enumerate(dec.meta["units"]):
        if m["std_from"] == "laplace + posterior":
            post_sd = np.array([m["posterior"]["std"][n] for n in PARAM_NAMES])
            k = np.asarray(UnitFitSettings().posterior_scale)
            assert np.all(dec.param_std[i] >= k * post_sd * (1 - 1e-5)), (dec.param_std[i], post_sd)
            lap = np.array([m["laplace_std"][n] for n in PARAM_NAMES])  # recorded apart: the width it came from
            np.testing.assert_allclose(dec.param_std[i], np.hypot(lap, k * post_sd), rtol=1e-5)
    assert any(m["std_from"] == "laplace + posterior" for m in dec.meta["units"]), dec.meta["units"]
    # min_ev = 1: no fit explains enough to move the grid, so the posterior reads x and IZ on the recording's own
    assert not dec.meta["posterior"]["grid_placement"]["anatomy"].endswith("_subject"), dec.meta["posterior"]
    # the intervals: 95 % = params +- 1.96 std, the 68 % one inside it; a unit on the posterior gets its quantiles
    iv = dec.param_interval
    assert iv.shape == (dec.n_units, 6, 4)
    for i, m in enumerate(dec.meta["units"]):
        # float32 bounds and values: two roundings of ~6e-8 relative each, so a tolerance relative to the value
        tol = 2e-6 * (1.0 + float(np.abs(np.nan_to_num(dec.params[i])).max()))
        if m["std_from"] == "laplace + posterior":
            np.testing.assert_allclose(iv[i, :, 3] - dec.params[i], 1.96 * dec.param_std[i], rtol=1e-4, atol=tol)
            np.testing.assert_allclose(dec.params[i] - iv[i, :, 0], 1.96 * dec.param_std[i], rtol=1e-4, atol=tol)
            assert np.all(iv[i, :, 0] <= iv[i, :, 1]) and np.all(iv[i, :, 1] < dec.params[i])
            assert np.all(dec.params[i] < iv[i, :, 2]) and np.all(iv[i, :, 2] <= iv[i, :, 3])
        elif m["std_from"] == "posterior":
            np.testing.assert_allclose(iv[i, :, 0], [m["posterior"]["q0.025"][n] for n in PARAM_NAMES], rtol=1e-5)
            np.testing.assert_allclose(iv[i, :, 2], [m["posterior"]["q0.84"][n] for n in PARAM_NAMES], rtol=1e-5)
        elif m["std_from"] == "laplace":  # no posterior in its domain: the Laplace width, uncalibrated
            np.testing.assert_allclose(iv[i, :, 2] - dec.params[i], dec.param_std[i], rtol=1e-4, atol=tol)
            np.testing.assert_allclose(iv[i, :, 3] - dec.params[i], 1.96 * dec.param_std[i], rtol=1e-4, atol=tol)
        elif m["std_from"] is None and m["params_from"] != "amortized posterior":
            assert np.isnan(iv[i]).all()
    # units the subject fit described carry finite properties near the truth (depth within 4 mm)
    by_est = {r["est"]: r["true"] for r in rep["per_true"] if r["est"] >= 0}
    fitted = [u for u, m in enumerate(dec.meta["units"]) if m["params_from"] != "none" and u in by_est]
    assert fitted
    for u in fitted:
        d = dict(zip(PARAM_NAMES, np.abs(dec.params[u] - rec.true_params[by_est[u]])))
        assert np.isfinite(dec.params[u]).all() and d["depth_mm"] < 4.0, (u, dec.params[u])


def r_kept_held(sm) -> bool:
    return sm["refit_free"] is None or sm["refit_free"]["kept"] == "held"


def test_bmiss_model_init_still_runs(case):
    a, rec, _ = case
    dec = bmiss.decompose(rec, "bmiss", progress=False, seed=0, init="model", deconvolve=False, **FAST)
    assert "phases" not in dec.meta["settings"] and dec.params.shape == (dec.n_units, 6)
    assert all(m["params_from"] == "model search" for m in dec.meta["units"])


def test_bmiss_without_geometry_is_a_clear_error(case):
    a, rec, _ = case
    bare = bmiss.io.Recording(emg=rec.emg, fs=rec.fs)  # no grid, no layout, no simulation meta
    with pytest.raises(Exception, match="--electrode"):
        bmiss.decompose(bare, "bmiss", progress=False)


def test_model_search_gate():
    """The model search runs when asked and the subject model explains enough of the blind MUAPs."""
    from types import SimpleNamespace

    from bmiss.pipeline.run import _model_search_gate
    from bmiss.pipeline.settings import ModelSettings

    def subject(ev):
        return SimpleNamespace(fit=None if ev is None else object(), meta={"overall_explained_variance": ev})

    s = ModelSettings()
    assert _model_search_gate(s, subject(0.97))["ran"] is True
    off = _model_search_gate(s, subject(0.47))
    assert off["ran"] is False and "0.47" in off["reason"] and off["subject_explained_variance"] == 0.47
    assert _model_search_gate(s, subject(None))["ran"] is True  # no fitted model: nothing to judge it by
    assert _model_search_gate(s.replace(model_search_min_ev=0.0), subject(0.1))["ran"] is True
    assert _model_search_gate(s.replace(model_search=False), subject(0.97)) == {"ran": False,
                                                                               "reason": "model_search=false"}
