"""One recording's decomposition and unit fits, for tests/test_devices.py.

Run as ``python tests/devices_child.py OUT.npz`` in a process whose JAX sees the devices
under test (``XLA_FLAGS=--xla_force_host_platform_device_count=2``); the test imports
:func:`run` to make the reference in its own process. Kept tiny: 3 s of a simulated biceps, cbss
with a few iterations, unit fits with few L-BFGS steps from a subject model at its nominal values
(no subject fit: only the equality of the unit fits across device counts is under test).
"""
from __future__ import annotations

import json
import sys

import numpy as np

N_ITER = 8
FIT_STEPS = 15


def quick_subject(rec, spikes):
    """A SubjectFit holding the recording's model at the base anatomy's nominal subject values."""
    import jax.numpy as jnp

    from bmiss import geometry
    from bmiss.fitting import SubjectFitSettings
    from bmiss.fitting import subject as sfm
    from bmiss.fitting.bounds import SUBJECT_NAMES, to_unc
    from bmiss.fitting.result import SubjectFit
    from bmiss.io import Decomposition

    base = geometry.anatomy_for_recording(rec)
    s = SubjectFitSettings(min_template_snr=3.0, max_units=4)
    dec = Decomposition(spikes=list(spikes), sources=np.zeros((len(spikes), 1), np.float32), fs=rec.fs,
                        method="truth", sil=np.ones(len(spikes)), cov_isi=np.full(len(spikes), 0.1), meta={})
    ob = sfm._observe(rec, dec, np.flatnonzero([len(x) >= 20 for x in spikes]), base, s, 0)
    model, _, _ = sfm._build_model(base, ob, s, {})
    nominal = sfm._nominal(base, {})
    lo, hi = np.asarray(model.sub_lo), np.asarray(model.sub_hi)
    phys = np.clip(np.array([nominal[k] for k in SUBJECT_NAMES], np.float32), lo + 1e-3 * (hi - lo),
                   hi - 1e-3 * (hi - lo))
    n = len(ob.idx)
    return SubjectFit(anatomy=base, base=base, subject={}, unit_index=ob.idx, unit_params=np.zeros((n, 6)),
                      unit_std=np.zeros((n, 6)), unit_gain=np.ones(n), unit_shift_ms=np.zeros(n), templates=ob.tpl,
                      model_muaps=np.zeros(0), explained_variance=np.zeros(n), overall_ev=0.0, degenerate=[],
                      timing={}, channels_used=ob.chans, model=model,
                      theta_subject=jnp.asarray(to_unc(phys, lo, hi)), window_full=ob.window_full)


def simulate():
    import bmiss

    return bmiss.simulate("biceps_brachii", duration_s=3, snr_db=30, seed=3, n_units=10, excitation="constant:0.6")


def helper_checks() -> dict:
    """How :mod:`bmiss.devices` places a divisible, a non-divisible and a scalar leaf."""
    import jax.numpy as jnp

    from bmiss import devices

    t = devices.shard_leading({"even": np.zeros((6, 3), np.float32), "odd": jnp.zeros((5, 3)),
                               "scalar": np.float32(1.0), "static": 7})
    r = devices.replicate(jnp.arange(6.0))
    return {"even_shards": devices.n_shards(t["even"]), "odd_shards": devices.n_shards(t["odd"]),
            "odd_devices": len(t["odd"].sharding.device_set) if hasattr(t["odd"], "sharding") else 1,
            "scalar_shards": devices.n_shards(t["scalar"]), "static_kept": t["static"] == 7,
            "replicated_devices": len(r.sharding.device_set), "replicated_shards": devices.n_shards(r),
            "values_kept": bool(np.array_equal(np.asarray(t["odd"]), np.zeros((5, 3))))}


def run(rec=None) -> dict:
    """Decompose (cbss) and fit the units of the tiny recording; numpy results."""
    import jax

    import bmiss
    from bmiss import devices
    from bmiss.fitting import UnitFitSettings, fit_units
    from bmiss.pipeline import refine

    rec = simulate() if rec is None else rec
    dec = bmiss.decompose(rec, "cbss", progress=False, seed=0, n_iter=N_ITER)
    pool = devices.shard_leading(refine.new_pool(16, 8, 64, 4))  # what search() hands to run_pool
    sf = quick_subject(rec, rec.true_spikes)
    uf = fit_units(sf, rec, list(rec.true_spikes), settings=UnitFitSettings(n_steps=FIT_STEPS, laplace=False,
                                                                                  min_template_snr=0.5))
    lens = [len(s) for s in dec.spikes]
    return {"n_jax_devices": np.array(jax.device_count()), "emg_sum": np.asarray(rec.emg, np.float64).sum(),
            "helpers": np.array(json.dumps(helper_checks())),
            "pool_W_devices": np.array(len(pool["W"].sharding.device_set) if hasattr(pool["W"], "sharding") else 1),
            "pool_W_shards": np.array(devices.n_shards(pool["W"])),
            "meta_devices": np.array(json.dumps(dec.meta["devices"])),
            "spike_lens": np.array(lens, np.int64),
            "spikes": np.concatenate([np.asarray(s, np.int64) for s in dec.spikes]) if lens else np.zeros(0, np.int64),
            "sil": np.asarray(dec.sil, np.float64), "sources": np.asarray(dec.sources, np.float32),
            "fit_params": uf.params, "fit_gain": uf.gain, "fit_shift": uf.shift_ms,
            "fit_ev": uf.explained_variance, "fit_status": np.array(uf.status),
            "fit_devices": np.array(uf.timing.get("devices", 0))}


if __name__ == "__main__":
    np.savez(sys.argv[1], **run())
