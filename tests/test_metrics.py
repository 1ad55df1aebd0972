import json

import numpy as np
import pytest

from bmiss import metrics as M
from bmiss.io import Decomposition, Recording

FS = 2048.0


def _train(n=40, start=200, seed=0, lo=80, hi=120):
    rng = np.random.default_rng(seed)
    return start + np.cumsum(rng.integers(lo, hi, n))


# ------------------------------------------------------------------ RoA
def test_tolerance_rounding():
    assert M.tol_samples(0.5, 2048) == 1  # 1.024 -> 1
    assert M.tol_samples(0.5, 1000) == 1  # 0.5 rounds half up, and at least 1
    assert M.tol_samples(1.0, 4096) == 4
    assert M.tol_samples(0.1, 2048) == 1  # never 0


def test_known_lag_drops_and_extras():
    true = _train()
    est = np.delete(true + 7, [5, 17])          # shifted by 7, 2 dropped
    extra = true[[3, 10, 30]] + 50              # 3 extra, far (>= 30 samples) from any true spike
    est = np.sort(np.concatenate([est, extra]))
    r = M.rate_of_agreement(est, true, FS)
    assert r["lag"] == -7                        # est + lag == true
    assert (r["tp"], r["fp"], r["fn"]) == (38, 3, 2)
    assert r["roa"] == pytest.approx(38 / 43)
    d = M.rate_of_agreement(est, true, FS, kind="dice")
    assert d["roa"] == pytest.approx(76 / 81)
    assert d["roa"] > r["roa"] and d["kind"] == "dice" and r["kind"] == "roa"


def test_tolerance_edges_at_2048():
    assert M.rate_of_agreement([1001], [1000], FS, max_lag_ms=0)["tp"] == 1
    assert M.rate_of_agreement([999], [1000], FS, max_lag_ms=0)["tp"] == 1
    assert M.rate_of_agreement([1002], [1000], FS, max_lag_ms=0)["tp"] == 0
    # with the lag search on: spikes 1 off either way count, a spike 2 off does not
    # (the +-1 spikes pin the best lag at 0)
    true = _train(seed=1)
    est = true.copy()
    est[4] += 1
    est[5] -= 1
    est[6] -= 1
    est[9] += 2
    r = M.rate_of_agreement(est, true, FS)
    assert r["lag"] == 0 and (r["tp"], r["fp"], r["fn"]) == (len(true) - 1, 1, 1)


def test_one_to_one():
    r = M.rate_of_agreement([1000, 1001, 2000, 3000], [1000, 2000, 3000], FS)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    # conflicting candidates: maximum matching, not greedy-by-distance
    r = M.rate_of_agreement([11, 13], [10, 12], FS, max_lag_ms=0)
    assert r["tp"] == 2


def test_lag_limit_and_empty():
    true = _train(seed=2)
    far = true + 100                      # 48.8 ms > 30 ms
    r = M.rate_of_agreement(far, true, FS)
    assert abs(r["lag"]) <= 61 and r["tp"] < len(true) // 2
    assert M.rate_of_agreement([], true, FS)["roa"] == 0.0
    assert M.rate_of_agreement([], [], FS) == {"roa": 0.0, "kind": "roa", "tp": 0, "fp": 0, "fn": 0,
                                               "lag": 0, "tol": 1}


def test_match_units_duplicate_and_false():
    rng = np.random.default_rng(3)
    t0, t1, t2 = _train(seed=10), _train(seed=11, start=230), _train(seed=12, start=260)
    e0 = t0 + 3                                           # perfect, lag -3
    e1 = np.sort(np.concatenate([np.delete(t1, [0, 1]), [t1[5] + 40]]))  # RoA 38/41
    e2 = np.delete(t0, np.arange(0, 40, 4))              # duplicate of t0, RoA 0.75
    e3 = np.sort(rng.choice(np.arange(100, 5000), 40, replace=False))  # random: false unit
    m = M.match_units([e0, e1, e2, e3], [t0, t1, t2], FS)
    assert m["n_true"] == 3 and m["n_est"] == 4
    pt = {p["true"]: p for p in m["per_true"]}
    assert pt[0]["est"] == 0 and pt[0]["roa"] == 1.0 and pt[0]["lag"] == -3
    assert pt[1]["est"] == 1 and pt[1]["roa"] == pytest.approx(38 / 41)
    assert pt[2]["est"] == -1 and pt[2]["fn"] == 40
    assert m["found_90"] == 2 and m["found_80"] == 2 and m["found_90_units"] == [0, 1]
    assert m["false_units"] == [3]
    assert len(m["duplicates"]) == 1
    j, i, r = m["duplicates"][0]
    assert (j, i) == (2, 0) and r == pytest.approx(0.75)
    assert np.asarray(m["roa"]).shape == (3, 4)


def test_match_units_hungarian_not_greedy():
    # est0's best is true0 (0.67), but the one-to-one optimum gives est0 to true1 (0.33)
    # and est1 to true0 (0.55): total 0.88 > 0.67 + RoA(est1, true1) = 0.67
    t0, t1 = _train(seed=20), _train(n=20, seed=21, start=240)
    e0 = np.sort(np.concatenate([t0, t1]))
    e1 = np.delete(t0, np.arange(0, 36, 2))                      # 22/40 = 0.55
    m = M.match_units([e0, e1], [t0, t1], FS)
    R = np.asarray(m["roa"])
    assert R[0, 0] > R[0, 1] > 0.5 and R[1, 0] > 0.3
    pt = {p["true"]: p["est"] for p in m["per_true"]}
    assert pt == {0: 1, 1: 0}


# ------------------------------------------------------------------ blind quality
def _pulse_source(spikes, n, noise, seed=0):
    rng = np.random.default_rng(seed)
    s = noise * rng.standard_normal(n)
    s[spikes] += 1.0
    return s


def test_sil_clean_vs_noise():
    n = 20000
    sp = _train(n=150, start=100, seed=4)
    sp = sp[sp < n]
    clean = _pulse_source(sp, n, 0.05)
    assert M.sil(clean, sp, FS) > 0.9
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(n)
    rand_sp = np.sort(rng.choice(n, len(sp), replace=False))
    assert M.sil(noise, rand_sp, FS) < 0.3
    # spikes = a random subset of the noise source's own peaks (the decomposer's peak rule,
    # >= 20 ms apart): same distribution as the other peaks, SIL ~ 0
    from bmiss.quality import min_distance_samples, peak_mask

    pk = np.flatnonzero(peak_mask(noise * np.abs(noise), min_distance_samples(FS)))
    assert abs(M.sil(noise, np.sort(rng.choice(pk, 150, replace=False)), FS)) < 0.3
    # sign convention: a negative pulse train is not a good unit
    assert M.sil(-clean, sp, FS) < 0.3


def test_pnr_known_value():
    n = 40000
    sp = _train(n=300, start=100, seed=6)
    sp = sp[sp < n]
    src = _pulse_source(sp, n, 0.05, seed=7)
    # peaks ~1, noise rms 0.05 -> 10 log10(1 / 0.0025) = 26.02 dB
    assert M.pnr(src, sp, FS) == pytest.approx(26.02, abs=0.4)
    # scale invariant
    assert M.pnr(3.0 * src, sp, FS) == pytest.approx(M.pnr(src, sp, FS))
    assert np.isnan(M.pnr(src, sp[:1], FS))


def test_cov_isi_and_rate():
    regular = np.arange(100, 10000, 100)
    assert M.cov_isi(regular, FS) == pytest.approx(0.0)
    assert M.discharge_rate(regular, FS) == pytest.approx(20.48)
    rng = np.random.default_rng(8)
    jit = np.cumsum(np.full(400, 100) + rng.normal(0, 10, 400)).astype(int)
    assert M.cov_isi(jit, FS) == pytest.approx(0.1, abs=0.02)
    # a long pause (> 5x median) is dropped
    paused = np.concatenate([regular, regular[-1] + 5000 + np.arange(0, 2000, 100)])
    assert M.cov_isi(paused, FS) == pytest.approx(0.0)
    assert np.isnan(M.cov_isi([5, 10], FS))
    q = M.unit_quality(_pulse_source(regular, 12000, 0.05), regular, FS)
    assert set(q) == {"n_spikes", "rate_hz", "cov_isi", "sil", "pnr_db"} and q["n_spikes"] == len(regular)


# ------------------------------------------------------------------ properties / evaluate
def test_property_errors():
    T = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    E = T + np.array([[0.1, -1.0], [-0.1, 1.0], [0.1, 0.0]])
    pe = M.property_errors(E, T, ["a", "b"])
    assert pe["a"]["mae"] == pytest.approx(0.1)
    assert pe["a"]["nrmse"] == pytest.approx(0.1 / 2.0)
    assert pe["b"]["rmse"] == pytest.approx(np.sqrt(2 / 3))
    pe = M.property_errors(E, T, ["a", "b"], bounds={"a": (0, 10), "b": (0, 100)})
    assert pe["a"]["nrmse"] == pytest.approx(0.01) and pe["b"]["norm"] == 100
    # coverage of the intervals: half-widths 0.05 / 0.2 on a, errors 0.1 -> in none at 68 %, all at 95 %
    Q = np.stack([E - 0.2, E - 0.05, E + 0.05, E + 0.2], -1)
    Q[2, 1] = np.nan  # a row without an interval is left out
    pe = M.property_errors(E, T, ["a", "b"], intervals=Q)
    assert pe["a"]["cover68"] == 0.0 and pe["a"]["cover95"] == 1.0 and pe["a"]["n_interval"] == 3
    assert pe["b"]["n_interval"] == 2 and pe["b"]["cover68"] == 0.0 and pe["b"]["cover95"] == 0.0  # errors 1.0
    assert "cover68" not in M.property_errors(E, T, ["a", "b"])["a"]
    with pytest.raises(ValueError):
        M.property_errors(E, T, ["a", "b"], intervals=Q[:2])


def test_evaluate_and_format():
    n = 12000
    t0, t1, t2 = _train(seed=10), _train(seed=11, start=230), _train(seed=12, start=260)
    rng = np.random.default_rng(9)
    rec = Recording(emg=rng.standard_normal((4, n)), fs=FS, true_spikes=[t0, t1, t2],
                    true_params=np.array([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]), param_names=("depth", "cv"))
    est = [t0 + 2, np.delete(t1, [0, 1]), np.delete(t0, np.arange(0, 40, 4)),
           np.sort(rng.choice(np.arange(100, n), 40, replace=False))]
    sources = np.stack([_pulse_source(s, n, 0.05, seed=k) for k, s in enumerate(est)])
    dec = Decomposition(spikes=est, sources=sources, fs=FS, method="test",
                        params=np.array([[5.5, 1.1], [6.5, 2.2], [0, 0], [0, 0]]), param_names=("cv", "depth"))
    rep = M.evaluate(dec, rec, oracle_found={0, 2})
    json.dumps(rep, allow_nan=False)
    s = rep["summary"]
    assert (s["n_true"], s["n_est"], s["found_90"], s["n_false"], s["n_duplicates"]) == (3, 4, 2, 1, 1)
    assert s["oracle_n"] == 2 and s["found_90_in_oracle"] == 1 and s["yield_90"] == 0.5
    assert [q["status"] for q in rep["per_est"]] == ["matched", "matched", "duplicate", "false"]
    assert rep["per_est"][0]["sil"] > 0.9
    pe = rep["property_errors"]
    assert set(pe) == {"depth", "cv"}
    assert pe["depth"]["mae"] == pytest.approx(0.15) and pe["cv"]["mae"] == pytest.approx(0.5)
    txt = M.format_report(rep)
    assert "found >=0.9: 2" in txt and "duplicate" in txt and "depth" in txt and "yield: 0.500" in txt
