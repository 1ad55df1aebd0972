"""Why the amortized posterior reads each unit's average over the whole search window.

The posterior network reads a fixed -10..38 ms around each MUAP's energy peak. The averages'
common window is otherwise the union of the units' measured supports, which for a few units with
short MUAPs (35-mm fibres) is only ~12 ms long: the network then sees mostly zeros. This script
takes bench_mismatch's short-fibre recording (seed, 20 dB, 10 s, 60 units), averages the true
discharges of the ``--n-shallow`` shallowest units alone (as a decomposition that found only those
would), and reports their posterior IZ error and std with the union window and with the whole
search window (and, for reference, the union over all 60 units, whose window is long already).

    python experiments/diag_posterior_window.py --json results/diag_posterior_window.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bmiss  # noqa: E402
from bmiss import anatomy, posterior  # noqa: E402
from bmiss.conductor import PARAM_NAMES  # noqa: E402
from bmiss.electrodes import layout_of_anatomy  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402
from bmiss.templates import search_bounds, spike_triggered_muaps  # noqa: E402

SHORT = {"muscle_overrides": {"fibre_length_mm": 35.0, "fibre_length_spread_mm": 2.0, "end_jitter_mm": 1.0}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-shallow", type=int, default=16)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rec = bmiss.simulate("biceps_brachii", duration_s=10, snr_db=20.0, seed=a.seed, n_units=60, **SHORT)
    an = anatomy.load("biceps_brachii")
    g = an.grid
    T = np.asarray(rec.true_params, np.float64)[:, [list(rec.param_names).index(n) for n in PARAM_NAMES]]
    shallow = np.sort(np.argsort(T[:, 0])[:a.n_shallow])
    pre, post = search_bounds(rec.fs)
    out = {"provenance": provenance(**vars(a)), "cases": {}}
    for name, sel, window in (("union of all 60 units", np.arange(len(T)), None),
                              (f"union of the {a.n_shallow} shallowest", shallow, None),
                              ("whole search window", shallow, (-pre, post))):
        keep = [i for i in sel if len(rec.true_spikes[i]) >= 10]
        tpl = spike_triggered_muaps(rec.emg, [rec.true_spikes[i] for i in keep], rec.fs, seed=0, min_discharges=10,
                                    window=window)
        p = posterior.unit_properties(tpl, layout_of_anatomy(an).positions_mm(), 2 * float(g.electrode_radius_mm),
                                      {"rotation_deg": 0.0, "grid_centre_x_mm": 0.0, "grid_centre_z_mm": 0.0})
        on = np.isin(keep, shallow)
        err = p.mean[on, 3] - T[np.asarray(keep)[on], 3]
        r = {"window_ms": [1e3 * w / rec.fs for w in tpl.window], "n_units": int(on.sum()),
             "iz_err_median_mm": float(np.median(err)), "iz_abs_err_median_mm": float(np.median(np.abs(err))),
             "iz_std_median_mm": float(np.median(p.std[on, 3]))}
        out["cases"][name] = r
        print(f"{name:28s} window {r['window_ms'][0]:6.1f}..{r['window_ms'][1]:5.1f} ms  IZ error median "
              f"{r['iz_err_median_mm']:5.1f} mm (|err| {r['iz_abs_err_median_mm']:4.1f}), std {r['iz_std_median_mm']:4.1f} mm")
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
