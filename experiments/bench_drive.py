"""Neural drive and motor-neuron parameters from cbss units against the simulation's truth.

For each excitation: simulate (biceps, 20 s, 20 dB by default), decompose with cbss (public API),
match the units to the truth, then

* neural drive: Pearson r of the smoothed cumulative spike train (400-ms Hann) with the true
  excitation, for all cbss units, for the matched ones, and for the TRUE trains of the matched
  true units (what a perfect decomposition of the same units would give);
* motor-neuron parameters (bmiss.recruitment) of the matched units against the pool's truth:
  threshold errors (fraction of the excitation range), rate at recruitment, plateau rate, rate
  slope, ISI CoV, and the pool-level Fuglevand fit.

    python experiments/bench_drive.py --json results/bench_drive.json [--cache DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


from bmiss.files import write_json
import bmiss
from bmiss import drive as dv
from bmiss import metrics
from bmiss import recruitment as rc
from bmiss.io import load_decomposition, load_recording, save_decomposition, save_recording


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "load_avg_1_5_15": load, "platform": platform.platform(),
            "python": sys.version.split()[0]}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        return "unknown"


def get_case(exc: str, snr: float, seed: int, duration: float, cache: Path | None):
    """(recording, cbss decomposition, cbss seconds or None when read from the cache)."""
    tag = f"{exc.replace(':', '_')}_snr{snr:g}_seed{seed}_{duration:g}s"
    if cache is not None:
        r, d = cache / f"rec_{tag}.npz", cache / f"dec_{tag}.npz"
        if r.exists() and d.exists():
            dec = load_decomposition(d)
            return load_recording(r), dec, dec.meta.get("bench_cbss_s")
    rec = bmiss.simulate("biceps_brachii", duration_s=duration, snr_db=snr, seed=seed, excitation=exc)
    t0 = time.perf_counter()
    dec = bmiss.api.decompose(rec, "cbss", progress=False)
    t_cbss = time.perf_counter() - t0
    dec.meta["bench_cbss_s"] = round(t_cbss, 2)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_recording(cache / f"rec_{tag}.npz", rec)
        save_decomposition(cache / f"dec_{tag}.npz", dec)
    return rec, dec, t_cbss


def run_case(rec, dec, window_s: float) -> dict:
    fs, n = rec.fs, rec.n_samples
    m = metrics.match_units(dec.spikes, rec.true_spikes, fs)
    pairs = [(int(t), int(e)) for t, e, _ in m["matched_pairs"]]
    good = [(t, e) for t, e, r in m["matched_pairs"] if r >= 0.9]
    exc = rec.excitation
    out = {"n_units": dec.n_units, "n_matched": len(pairs), "found_90": int(m["found_90"]),
           "false_units": len(m["false_units"])}
    d_all = dv.neural_drive(dec.spikes, fs, n, window_s=window_s)
    d_m = dv.neural_drive([dec.spikes[e] for _, e in pairs], fs, n, window_s=window_s)
    d_t = dv.neural_drive([rec.true_spikes[t] for t, _ in pairs], fs, n, window_s=window_s)
    out["drive_r"] = {"all_units": dv.drive_correlation(d_all, exc)["r"],
                      "matched_units": dv.drive_correlation(d_m, exc)["r"],
                      "true_trains_of_matched": dv.drive_correlation(d_t, exc)["r"]}
    res = {}
    for name, kw in (("at_discharge", {}), ("half_isi", {"half_isi": True})):
        props = rc.mu_properties(dec.spikes, fs, exc, **kw)
        fit = rc.fit_pool(props)
        cmp_all = rc.compare_with_truth(props, fit, rec, pairs)
        cmp_good = rc.compare_with_truth(props, fit, rec, good)
        true_props = rc.mu_properties(rec.true_spikes, fs, exc, **kw)
        cmp_true = rc.compare_with_truth(true_props, rc.fit_pool([true_props[t] for t, _ in pairs]), rec,
                                         [(t, t) for t, _ in pairs])
        res[name] = {"errors_matched": cmp_all["errors"], "errors_roa90": cmp_good["errors"],
                     "errors_true_trains_same_units": cmp_true["errors"],
                     "pool_fit": cmp_all["pool_fit"], "pool_truth": cmp_all["pool_truth"],
                     "pool_errors": cmp_all["pool_errors"], "excitation_range": cmp_all["excitation_range"],
                     "per_unit": cmp_all["per_unit"]}
    out["mn_params"] = res
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--excitations", nargs="+", default=["trapezoid:0.3", "sinusoid:0.3:0.1:0.5"])
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window-s", type=float, default=0.4)
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep/reuse recordings and cbss results")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    doc = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
           "commit": git_commit(), "machine": machine(),
           "settings": {"anatomy": "biceps_brachii", "snr_db": a.snr, "duration_s": a.duration, "seed": a.seed,
                        "window_s": a.window_s, "method": "cbss", "matching": "metrics.match_units (Hungarian, RoA>=0.3)"},
           "cases": {}}
    for exc in a.excitations:
        t0 = time.perf_counter()
        rec, dec, t_cbss = get_case(exc, a.snr, a.seed, a.duration, a.cache)
        case = run_case(rec, dec, a.window_s)
        case["cbss_s"] = t_cbss
        case["case_s"] = round(time.perf_counter() - t0, 1)
        doc["cases"][exc] = case
        e = case["mn_params"]["at_discharge"]["errors_matched"]
        eh = case["mn_params"]["half_isi"]["errors_matched"]
        print(f"{exc}: units {case['n_units']} matched {case['n_matched']} found90 {case['found_90']} | "
              f"drive r all {case['drive_r']['all_units']:.3f} matched {case['drive_r']['matched_units']:.3f} "
              f"true {case['drive_r']['true_trains_of_matched']:.3f} | RT err/range MAE {e['RT_fraction_of_range']['mae']} "
              f"(half-ISI {eh['RT_fraction_of_range']['mae']})", flush=True)
    doc["machine_after"] = machine()
    if a.json:
        write_json(a.json, doc)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
