"""Subject-fit accuracy on own simulations with tissue drawn away from the base anatomy.

    python experiments/bench_fit.py --draws 4 --duration 20 --snr 20 --json results/bench_fit.json

Each draw simulates the base anatomy (biceps_brachii by default) with hidden "real" values drawn
uniformly: fat 1-6 mm, skin 0.5-2 mm, fibre length 40-150 mm, mean CV 3.5-4.5 m/s, grid rotation
0-15 deg (per-fibre MUAPs). The recording's meta keeps the NOMINAL anatomy, so the fit starts
from the base values and must find the drawn ones. Targets (issue 10): fat within 0.3 mm, fibre
length within 5 %, mean CV within 0.1 m/s, IZ within 2 mm.

``--spikes truth`` fits on the true discharges (isolates the fit from the blind decomposition);
the default ``cbss`` is the real pipeline. IZ error: the mean over fitted units of
|fitted IZ relative to the grid - true IZ| (the grid offset along the fibres is part of the fit).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bmiss.files import write_json
import bmiss
from bmiss import api as fit_api
from bmiss import files as bfiles
from bmiss.errors import FitError
from bmiss import metrics
from bmiss.io import Decomposition

TARGETS = {"fat_mm": 0.3, "length_rel": 0.05, "cv_m_s": 0.1, "iz_mm": 2.0}


def draw(seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    return {"fat_mm": float(rng.uniform(1, 6)), "skin_mm": float(rng.uniform(0.5, 2)),
            "length_mm": float(rng.uniform(40, 150)), "cv_m_s": float(rng.uniform(3.5, 4.5)),
            "rotation_deg": float(rng.uniform(0, 15))}


def _truth_dec(rec) -> Decomposition:
    sp = list(rec.true_spikes)
    return Decomposition(spikes=sp, sources=np.zeros((len(sp), 1), np.float32), fs=rec.fs, method="truth",
                         sil=np.ones(len(sp)), cov_isi=np.full(len(sp), 0.1), meta={})


def one(anatomy: str, seed: int, duration: float, snr: float | None, n_units: int, spikes: str, fit_kw: dict) -> dict:
    d = draw(seed)
    fit_kw = dict(fit_kw)
    do_warm = fit_kw.pop("_warm", False)
    t = time.perf_counter()
    rec = bmiss.simulate(anatomy, duration_s=duration, snr_db=snr, seed=seed, n_units=n_units,
                         tissue_overrides={"fat_thickness_mm": d["fat_mm"], "skin_thickness_mm": d["skin_mm"]},
                         muscle_overrides={"fibre_length_mm": d["length_mm"], "cv_mean_m_s": d["cv_m_s"]},
                         grid_rotation_deg=d["rotation_deg"])
    sim_s = time.perf_counter() - t
    dec = _truth_dec(rec) if spikes == "truth" else bmiss.decompose(rec, "cbss", progress=False, seed=seed)
    t = time.perf_counter()
    try:
        f = fit_api.fit(rec, decomposition=dec, progress=False, seed=seed, **fit_kw)
    except FitError as e:
        return {"seed": seed, "truth": d, "error": str(e)}
    fit_s = time.perf_counter() - t
    warm = None
    if do_warm:
        # the same call again: every jitted function is cached, so this is the after-JIT time
        f2 = fit_api.fit(rec, decomposition=dec, progress=False, seed=seed, **fit_kw)
        warm = dict(f2.timing)
    # true MU of each fitted unit (truth spikes: itself; cbss: best RoA match)
    if spikes == "truth":
        true_idx = f.unit_index
    else:
        m = metrics.match_units(dec.spikes, rec.true_spikes, rec.fs)
        est2true = {int(r["est"]): int(r["true"]) for r in m["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= 0.5}
        true_idx = np.array([est2true.get(int(i), -1) for i in f.unit_index])
    ok = true_idx >= 0
    tp = rec.true_params[true_idx[ok]]
    v = {k: val for k, (val, _) in f.subject.items()}
    sd = {k: s for k, (_, s) in f.subject.items()}
    iz_grid = f.unit_params[ok, 3] - v["dz_mm"]  # IZ relative to the grid centre (true grid centre at z = 0)
    errs = {
        "fat_mm": v["fat_mm"] - d["fat_mm"],
        "skin_mm": v["skin_mm"] - d["skin_mm"],
        "length_rel": float(np.mean(f.unit_params[ok, 5])) / d["length_mm"] - 1 if ok.any() else None,
        "length_pop_rel": v["length_pop_mm"] / d["length_mm"] - 1,
        "cv_m_s": float(np.mean(f.unit_params[ok, 4]) - np.mean(tp[:, 4])) if ok.any() else None,
        "cv_vs_anatomy_mean": float(np.mean(f.unit_params[:, 4])) - d["cv_m_s"],
        "iz_mm": float(np.mean(np.abs(iz_grid - tp[:, 3]))) if ok.any() else None,
        "rotation_deg": v["rotation_deg"] - d["rotation_deg"],
    }
    met = {k: (errs[k] is not None and abs(errs[k]) <= TARGETS[k]) for k in TARGETS}
    row = {"seed": seed, "truth": d, "fitted": v, "std": sd, "errors": errs, "target_met": met,
           "n_units_fitted": int(len(f.unit_index)), "n_units_matched": int(ok.sum()),
           "explained_variance": f.overall_ev, "chi2_reduced": f.chi2_reduced, "timing_s": f.timing,
           "forward_model": f.settings.get("forward_model"), "simulate_s": round(sim_s, 1), "fit_call_s": round(fit_s, 1),
           "warm_timing_s": warm}
    print(f"seed {seed}: fat {d['fat_mm']:.2f}->{v['fat_mm']:.2f}  L {d['length_mm']:.0f}->{v['length_pop_mm']:.0f} "
          f"(units {np.mean(f.unit_params[:, 5]):.0f})  CV {d['cv_m_s']:.2f}->{np.mean(f.unit_params[:, 4]):.2f}  "
          f"rot {d['rotation_deg']:.1f}->{v['rotation_deg']:.1f}  IZ err {errs['iz_mm']}  EV {f.overall_ev:.3f}  "
          f"{len(f.unit_index)} units  fit {f.timing['fit']:.1f} s", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anatomy", default="biceps_brachii")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--spikes", choices=("cbss", "truth"), default="cbss")
    ap.add_argument("--n-steps", type=int, default=None)
    ap.add_argument("--max-units", type=int, default=None)
    ap.add_argument("--no-laplace", action="store_true")
    ap.add_argument("--fix", nargs="*", default=[], help="subject parameters held at the base value (e.g. anisotropy)")
    ap.add_argument("--forward", choices=("surrogate", "conductor"), default="surrogate",
                    help="the fit's MUAP model (the network falls back to the conductor outside its domain)")
    ap.add_argument("--warm", action="store_true", help="repeat the first draw's fit to time it after JIT")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    fit_kw = {"laplace": not a.no_laplace, "fix": tuple(a.fix), "forward": a.forward}
    if a.n_steps:
        fit_kw["n_steps"] = a.n_steps
    if a.max_units:
        fit_kw["max_units"] = a.max_units
    rows = [one(a.anatomy, a.seed0 + i, a.duration, a.snr, a.n_units, a.spikes,
                {**fit_kw, "_warm": a.warm and i == 0}) for i in range(a.draws)]
    good = [r for r in rows if "errors" in r]
    summary = {}
    for k in ("fat_mm", "skin_mm", "length_rel", "cv_m_s", "iz_mm", "rotation_deg"):
        e = np.array([r["errors"][k] for r in good if r["errors"][k] is not None], float)
        if len(e):
            summary[k] = {"mean_abs": float(np.mean(np.abs(e))), "max_abs": float(np.max(np.abs(e))),
                          "target": TARGETS.get(k), "n_met": int(sum(r["target_met"].get(k, False) for r in good))}
    doc = {"command": " ".join([sys.executable] + sys.argv), "settings": vars(a), "targets": TARGETS, "rows": rows, "summary": summary,
           "provenance": bfiles.provenance()}
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(a.json, doc)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
