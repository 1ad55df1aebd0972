"""How the ``unit_properties`` stage should estimate each unit's properties: accuracy, interval
coverage and time of the unit fit's variants and of the amortized posterior, on recordings the
model did not make.

    python experiments/bench_unit_props.py --json results/bench_unit_props.json

Recordings (experiments/bench_posterior.py's, all made by other paths than the fit's model:
per-fibre MUAPs with another IAP, a grid rotated 10 deg, 35-mm fibres, perturbed tissue, a
22-mm-thick vastus lateralis with a 10-mm grid). Units: every unit with >= 30 true discharges,
averaged at its TRUE discharges (the benchmark measures the property estimate, not the
decomposition). The subject model is fitted as the pipeline fits it (fat and skin held) to the
oracle decomposition. Then, per unit:

* ``posterior``: the amortized posterior as the pipeline calls it (mean, 68 % / 95 % quantiles);
* ``fit:<start>:<steps>[:<solver>[:<gain prior sd>]]``: :func:`bmiss.fitting.fit_units` from the random-bank start
  (``bank``, the default) or from the posterior's mean (``post``), ``steps`` iterations of
  ``solver`` (``lm``: per-unit Levenberg-Marquardt, the default; ``lbfgs``: one joint L-BFGS). Its intervals three ways: ``laplace`` (fit +- z Laplace std), ``posterior`` (fit +-
  z posterior std) and ``combined`` (fit +- z sqrt(Laplace² + posterior²)); ``checked``: the
  pipeline's rule (combined, but a unit whose fit lies more than ``check_z`` posterior std from the
  posterior mean in any property reports the posterior's mean and quantile-free +- z std);
  ``reported``: the intervals the pipeline reports (``param_interval``): the checked rule, its 68 %
  interval with its own factor (``UnitFitSettings.posterior_scale68``) and the posterior's
  quantiles for the units sent to the posterior.

Metrics per property: RMSE (length relative), share of true values inside the 68 % / 95 %
intervals; time per 20 units (after a warm-up call on the same shapes).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bmiss  # noqa: E402
from bmiss import files, fitting  # noqa: E402
from bmiss.conductor import PARAM_NAMES  # noqa: E402
from bmiss.fitting import SubjectFitSettings, UnitFitSettings  # noqa: E402
from bmiss.geometry import anatomy_for_recording  # noqa: E402
from bmiss.pipeline.properties import _posterior, _symmetric, model_check  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_posterior", ROOT / "experiments" / "bench_posterior.py")
BP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BP)

Z68, Z95 = 1.0, 1.96


def _metrics(est, sd, truth):
    return BP.metrics(est, est - Z68 * sd, est + Z68 * sd, est - Z95 * sd, est + Z95 * sd, truth)


def one_recording(name, a) -> dict:
    rec, _ = BP._simulated(name, a.duration, a.n_units, a.seed, a.snr, a.cache)
    lo, hi = int(np.ceil(20e-3 * rec.fs)), int(np.ceil(80e-3 * rec.fs))
    cnt = np.array([np.sum((np.asarray(s) >= lo) & (np.asarray(s) + hi <= rec.n_samples)) for s in rec.true_spikes])
    idx = np.flatnonzero(cnt >= a.min_discharges)
    truth = np.asarray(rec.true_params, np.float64)[idx]
    spikes = [np.asarray(rec.true_spikes[i]) for i in idx]
    row = {"recording": name, "n_units": int(len(idx))}
    t = time.perf_counter()
    orc = bmiss.decompose(rec, "oracle", progress=False)
    base = anatomy_for_recording(rec)
    sf = fitting.fit_subject(rec, orc, anatomy=base, settings=SubjectFitSettings(fix=("fat_mm", "skin_mm"), forward=a.subject_forward),
                             seed=a.seed, progress=False)
    row["subject_fit_s"] = round(time.perf_counter() - t, 1)
    row["subject_forward"] = sf.settings.get("forward_model")
    dz = float(sf.subject["dz_mm"][0])
    units = [SimpleNamespace(spikes=s) for s in spikes]
    # as the pipeline places it (run._placement): on the fitted grid only where the subject model
    # explains subject_fit.min_ev of the MUAPs, else on the recording's own
    placed = sf.anatomy if sf.overall_ev >= SubjectFitSettings().min_ev else base
    dz_post = float(placed.grid.centre_z_mm) - float(base.grid.centre_z_mm)
    row["posterior_placement"] = {"anatomy": placed.name, "subject_explained_variance": float(sf.overall_ev)}
    t = time.perf_counter()
    post, p_idx, p_meta = _posterior(rec, units, placed, UnitFitSettings(min_discharges=10), a.seed)
    row["posterior_s"] = round(time.perf_counter() - t, 2)
    pm = np.full((len(idx), 6), np.nan)
    ps = np.full((len(idx), 6), np.nan)
    q = {k: np.full((len(idx), 6), np.nan) for k in ("0.025", "0.16", "0.84", "0.975")}
    dom = np.zeros(len(idx), bool)
    for j, i in enumerate(p_idx):
        pm[i], ps[i] = post.mean[j], post.std[j]
        dom[i] = bool(post.in_domain[j])
        for k in q:
            q[k][i] = post.q[k][j]
    # IZ in the grid-centred frame of the truth, as the fit's below: a posterior placed on the fitted
    # grid reads IZ from that grid's fibre midpoint
    pm[:, 3] -= dz_post
    for k in q:
        q[k][:, 3] -= dz_post
    row["posterior"] = BP.metrics(pm, q["0.16"], q["0.84"], q["0.025"], q["0.975"], truth)
    row["variants"] = {}
    for start, steps, solver, gain in a.variants:
        s = UnitFitSettings(n_steps=steps, posterior=False, solver=solver,
                            **({} if gain is None else {"gain_prior_sd": gain}))
        st = pm if start == "post" else None
        fitting.fit_units(sf, rec, spikes, settings=s, seed=a.seed, start=st)  # warm-up: compile
        t = time.perf_counter()
        uf = fitting.fit_units(sf, rec, spikes, settings=s, seed=a.seed, start=st)
        dt = time.perf_counter() - t
        est = np.array(uf.params, np.float64)
        est[:, 3] -= dz  # IZ in the grid-centred frame of the truth (as bench_posterior)
        lap = np.array(uf.std, np.float64)
        # as the pipeline: the posterior's (scaled) spread joins the width only where it is in its domain
        k = np.asarray(s.posterior_scale, np.float64)
        comb = np.where(dom[:, None], np.sqrt(lap**2 + (k * np.nan_to_num(ps, nan=np.inf)) ** 2), lap)
        # the pipeline's model check: units whose fit disagrees with their posterior report the posterior
        off = np.array([bool(dom[i] and np.isfinite(est[i]).all() and model_check(est[i], pm[i], ps[i], s.check_z))
                        for i in range(len(idx))])
        chk, chk_sd = np.where(off[:, None], pm, est), np.where(off[:, None], ps, comb)
        # the pipeline's intervals (param_interval): 68 % with its own factor k68, the posterior's
        # quantiles where the model check sent the unit to the posterior
        k68 = np.asarray(s.posterior_scale68, np.float64)
        half68 = np.where(dom[:, None], np.hypot(lap, k68 * np.nan_to_num(ps, nan=np.inf)), lap)
        iv = _symmetric(est, comb, half68)
        qs = np.stack([q[k] for k in ("0.025", "0.16", "0.84", "0.975")], -1)
        iv = np.where(off[:, None, None], qs, iv)
        key = f"fit:{start}:{steps}:{solver}" + (f":{gain:g}" if gain else "")
        row["variants"][key] = {
            "time_s_per_20_units": round(dt * 20 / max(len(idx), 1), 2), "timing": uf.timing,
            "n_fitted": int(np.isfinite(est[:, 0]).sum()),
            "laplace": _metrics(est, lap, truth), "posterior": _metrics(est, ps, truth),
            "combined": _metrics(est, comb, truth), "n_checked_to_posterior": int(off.sum()),
            "checked": _metrics(chk, chk_sd, truth), "posterior_scale": list(s.posterior_scale),
            "reported": BP.metrics(chk, iv[..., 1], iv[..., 2], iv[..., 0], iv[..., 3], truth),
            "posterior_scale68": list(k68),
            "units": {"fit": est, "laplace_std": lap, "posterior_mean": pm, "posterior_std": ps,
                      "in_domain": dom.tolist(), "to_posterior": off.tolist(), "truth": truth}}
        print(name, key, round(dt, 1), {k: round(v["rmse"], 3) for k, v in row["variants"][key]["laplace"].items()
                                                   if "rmse" in v}, flush=True)
    return row


def pooled(rows, key_fn) -> dict:
    """RMSE and coverage over every unit of every recording (weighted by units)."""
    out = {}
    for n in PARAM_NAMES:
        ms = [key_fn(r)[n] for r in rows if key_fn(r) is not None and key_fn(r).get(n, {}).get("n")]
        if not ms:
            continue
        w = np.array([m["n"] for m in ms], float)
        out[n] = {"n": int(w.sum()), "rmse": float(np.sqrt(np.sum(w * np.array([m["rmse"] ** 2 for m in ms])) / w.sum())),
                  "cover68": float(np.sum(w * np.array([m["cover68"] for m in ms])) / w.sum()),
                  "cover95": float(np.sum(w * np.array([m["cover95"] for m in ms])) / w.sum())}
    return out


def _variant(v: str):
    f = v.split(":") + [None, None]
    return f[0], int(f[1]), f[2] or "lm", float(f[3]) if f[3] else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", nargs="+", default=["iap", "rotated", "short", "tissue", "large"])
    ap.add_argument("--variants", nargs="+", default=["bank:100:lbfgs", "bank:20:lm"],
                    help="start:steps[:solver[:gain_prior_sd]] (start bank|post, solver lm|lbfgs (default lm), "
                         "gain_prior_sd default: the settings' default)")
    ap.add_argument("--subject-forward", default=SubjectFitSettings().forward, choices=("conductor", "surrogate"),
                    help="the subject fit's (and so the unit fits') MUAP model")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--n-units", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--min-discharges", type=int, default=30)
    ap.add_argument("--cache", default="", help="folder of cached simulated recordings (bench_posterior's)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.variants = [_variant(v) for v in a.variants]
    prov = files.provenance(**{k: v for k, v in vars(a).items()})
    rows = [one_recording(n, a) for n in a.recordings]
    summary = {"posterior": pooled(rows, lambda r: r["posterior"])}
    for start, steps, solver, gain in a.variants:
        k = f"fit:{start}:{steps}:{solver}" + (f":{gain:g}" if gain else "")
        for iv in ("laplace", "posterior", "combined", "checked", "reported"):
            summary[f"{k} / {iv}"] = pooled(rows, lambda r: r["variants"][k][iv])
        summary[f"{k} / time_s_per_20_units"] = float(np.median([r["variants"][k]["time_s_per_20_units"] for r in rows]))
    out = {"provenance": prov, "rows": rows, "pooled": summary,
           "note": "IZ in the grid-centred frame (fit IZ minus the fitted dz, the posterior's minus its grid's); length errors relative; "
                   "intervals mean +- 1 / 1.96 std for the fit variants, quantiles for the posterior"}
    if a.json:
        files.write_json(a.json, out)
        print("wrote", a.json)
    for k, v in summary.items():
        if isinstance(v, dict):
            print(k, {n: (round(m["rmse"], 2), round(m["cover68"], 2), round(m["cover95"], 2)) for n, m in v.items()})
        else:
            print(k, v)


if __name__ == "__main__":
    main()
