"""Sparse deconvolution stage on cbss units: what it adds, per unit and overall.

For each (excitation, SNR): simulate (biceps, 20 s), decompose with cbss (public API), estimate
the units' MUAPs by spike-triggered averaging (bmiss.templates) and deconvolve
(bmiss.deconvolve.deconvolve_recording). Reported against the truth, before and after: units
found at RoA >= 0.9 / 0.8, false units, mean RoA of matched units; per unit: discharges added
/ removed and how many of those were right; the fraction of EMG variance explained, the residual
PSD; and the time of the stage next to the cbss time. A second experiment per case removes 10 %
of the true discharges of the matched true units and deconvolves with the TRUE MUAPs.

    python experiments/bench_deconvolve.py --json results/bench_deconvolve.json [--cache DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bmiss.files import write_json
from bmiss import metrics
from bmiss.deconvolve import deconvolve, deconvolve_recording

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_drive import get_case, git_commit, machine  # noqa: E402  (same cache and provenance)


def _near(x, ref, tol=1) -> np.ndarray:
    ref = np.sort(np.asarray(ref, np.int64))
    x = np.asarray(x, np.int64)
    if len(x) == 0 or len(ref) == 0:
        return np.zeros(len(x), bool)
    k = np.clip(np.searchsorted(ref, x), 1, len(ref) - 1)
    return np.minimum(np.abs(ref[k] - x), np.abs(ref[k - 1] - x)) <= tol


def score(spikes, rec) -> dict:
    m = metrics.match_units(spikes, rec.true_spikes, rec.fs)
    roas = [r for _, _, r in m["matched_pairs"]]
    return {"found_90": int(m["found_90"]), "found_80": int(m["found_80"]), "n_matched": len(roas),
            "false_units": len(m["false_units"]), "mean_roa_matched": float(np.mean(roas)) if roas else None,
            "pairs": [(int(t), int(e), float(r)) for t, e, r in m["matched_pairs"]]}


def run_case(rec, dec, kw) -> dict:
    fs = rec.fs
    before = score(dec.spikes, rec)
    t0 = time.perf_counter()
    res, tpl = deconvolve_recording(rec.emg, dec.spikes, fs, **kw)
    t_stage = time.perf_counter() - t0
    after = score(res.spikes, rec)
    true_of = {e: t for t, e, _ in before["pairs"]}
    units = []
    for i in range(dec.n_units):
        u = {"unit": i, "frozen": bool(res.frozen[i]), "detectability_z": round(float(res.detectability[i]), 2),
             "added": int(len(res.added[i])), "removed": int(len(res.removed[i])),
             "ve_before": float(res.ve_unit_before[i]), "ve_after": float(res.ve_unit_after[i])}
        if i in true_of:
            t = true_of[i]
            r0 = metrics.rate_of_agreement(dec.spikes[i], rec.true_spikes[t], fs)
            r1 = metrics.rate_of_agreement(res.spikes[i], rec.true_spikes[t], fs)
            truth = rec.true_spikes[t] - r0["lag"]  # in the estimate's time frame
            u.update({"true": int(t), "roa_before": r0["roa"], "roa_after": r1["roa"],
                      "added_correct": int(_near(res.added[i], truth).sum()),
                      "removed_correct": int((~_near(res.removed[i], truth)).sum())})
        units.append(u)
    n_add = sum(u["added"] for u in units)
    n_add_ok = sum(u.get("added_correct", 0) for u in units)
    n_rm = sum(u["removed"] for u in units)
    n_rm_ok = sum(u.get("removed_correct", 0) for u in units)
    f = res.psd_freqs_hz
    keep = np.searchsorted(f, [10, 20, 50, 100, 150, 200, 300, 400, 500, 700])
    out = {"before": {k: v for k, v in before.items() if k != "pairs"},
           "after": {k: v for k, v in after.items() if k != "pairs"},
           "added": n_add, "added_correct": n_add_ok, "removed": n_rm, "removed_correct": n_rm_ok,
           "ve_before": res.ve_before, "ve_after": res.ve_after, "n_frozen": int(res.frozen.sum()),
           "stage_s": round(t_stage, 2), "deconvolve_s": round(res.timing_s, 2),
           "templates_s": round(t_stage - res.timing_s, 2),
           "template_window": list(map(int, tpl.window)), "settings": res.settings,
           "residual_psd_uv2_per_hz": {"freq_hz": [float(f[k]) for k in keep],
                                       "before": [float(res.psd_before[k]) for k in keep],
                                       "after": [float(res.psd_after[k]) for k in keep]},
           "units": units}
    # recovery with the true MUAPs: 10 % of the matched units' true discharges removed
    tu = [t for t, _, _ in before["pairs"]]
    if tu:
        rng = np.random.default_rng(0)
        true = [rec.true_spikes[t] for t in tu]
        inp = [np.sort(rng.choice(s, int(round(0.9 * len(s))), replace=False)) for s in true]
        r2 = deconvolve(rec.emg, rec.true_muaps[tu], inp, fs, **{k: v for k, v in kw.items() if k != "support"})
        rb = [metrics.rate_of_agreement(s, t, fs)["roa"] for s, t in zip(inp, true)]
        ra = [metrics.rate_of_agreement(s, t, fs)["roa"] for s, t in zip(r2.spikes, true)]
        adds = sum(len(a) for a in r2.added)
        ok = sum(int(_near(a, t).sum()) for a, t in zip(r2.added, true))
        out["recovery_true_muaps"] = {"n_units": len(tu), "mean_roa_before": float(np.mean(rb)),
                                      "mean_roa_after": float(np.mean(ra)), "added": adds, "added_correct": ok,
                                      "n_frozen": int(r2.frozen.sum()), "deconvolve_s": round(r2.timing_s, 2)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--excitations", nargs="+", default=["trapezoid:0.3", "sinusoid:0.3:0.1:0.5"])
    ap.add_argument("--snrs", nargs="+", type=float, default=[20.0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    kw: dict = {}
    doc = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
           "commit": git_commit(), "machine": machine(),
           "settings": {"anatomy": "biceps_brachii", "duration_s": a.duration, "seed": a.seed, "method": "cbss",
                        "templates": "bmiss.templates.spike_triggered_muaps defaults", "deconvolve": kw or "defaults"},
           "cases": {}}
    for snr in a.snrs:
        for exc in a.excitations:
            rec, dec, t_cbss = get_case(exc, snr, a.seed, a.duration, a.cache)
            case = run_case(rec, dec, kw)
            case["cbss_s"] = t_cbss
            doc["cases"][f"{exc} @ {snr:g} dB"] = case
            b, f = case["before"], case["after"]
            print(f"{exc} {snr:g} dB: found90 {b['found_90']}->{f['found_90']} found80 {b['found_80']}->{f['found_80']} "
                  f"false {b['false_units']}->{f['false_units']} meanRoA {b['mean_roa_matched']:.3f}->"
                  f"{f['mean_roa_matched']:.3f} | added {case['added']} ({case['added_correct']} right) removed "
                  f"{case['removed']} ({case['removed_correct']} right) | VE {case['ve_before']:.3f}->{case['ve_after']:.3f}"
                  f" | stage {case['stage_s']} s (deconv {case['deconvolve_s']}), cbss {t_cbss}", flush=True)
            if "recovery_true_muaps" in case:
                rr = case["recovery_true_muaps"]
                print(f"   recovery (true MUAPs, 10 % removed): RoA {rr['mean_roa_before']:.3f}->{rr['mean_roa_after']:.3f}"
                      f" added {rr['added']} ({rr['added_correct']} right)", flush=True)
    doc["machine_after"] = machine()
    if a.json:
        write_json(a.json, doc)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
