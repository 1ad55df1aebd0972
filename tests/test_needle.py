"""Needle EMG (bmiss.needle): features of known MUAPs, synthetic decomposition, WFDB reader, CLI,
shipped classifier."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bmiss.needle.features import analyze_recording, muap_features

FS = 23437.5
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "n2001"
REC = DATA / "N2001A01BB01.hea"
need_data = pytest.mark.skipif(not REC.exists(), reason=f"shared N2001 records not found at {DATA}")


def sine_muap(amp_uv: float, dur_ms: float, n_phases: int, pre_ms: float = 5.0, post_ms: float = 5.0,
              notch_uv: float = 0.0) -> np.ndarray:
    """amp * sin(pi n t / D) on [0, D], zero outside: n phases, n turns, peak-to-peak 2 amp
    (amp for n = 1), rectified area 2 amp D / pi.  ``notch_uv`` adds a small bump on the first
    phase (2 extra turns when >= 25 µV, none below)."""
    D = dur_ms * 1e-3
    t = np.arange(-pre_ms * 1e-3, D + post_ms * 1e-3, 1 / FS)
    v = np.where((t >= 0) & (t <= D), amp_uv * np.sin(np.pi * n_phases * np.clip(t, 0, D) / D), 0.0)
    if notch_uv:
        c = D / (2 * n_phases)
        v -= notch_uv * np.exp(-0.5 * ((t - c) / (0.08e-3)) ** 2) * ((t >= 0) & (t <= D))
    return v


@pytest.mark.parametrize("amp,dur,n", [(500.0, 9.0, 3), (300.0, 14.0, 6), (150.0, 5.0, 2)])
def test_muap_features_of_known_shapes(amp, dur, n):
    v = sine_muap(amp, dur, n)
    f = muap_features(v, FS)
    # duration: the 20 µV level cuts D/(n pi) asin(20/amp) at each end (< 0.15 ms here) + 1 sample
    assert f["duration_ms"] == pytest.approx(dur, abs=0.25)
    assert f["amplitude_uv"] == pytest.approx(2 * amp, rel=0.01)
    assert f["area_uvms"] == pytest.approx(2 * amp * dur / math.pi, rel=0.03)
    assert f["phases"] == n
    assert f["turns"] == n
    thick = (2 * amp * dur / math.pi) / (2 * amp)
    assert f["thickness_ms"] == pytest.approx(thick, rel=0.03)
    assert f["size_index"] == pytest.approx(2 * math.log10(2 * amp / 1000) + thick, abs=0.05)


def test_turns_threshold_and_phase_hysteresis():
    base = muap_features(sine_muap(500, 9, 3), FS)
    small = muap_features(sine_muap(500, 9, 3, notch_uv=15), FS)
    big = muap_features(sine_muap(500, 9, 3, notch_uv=60), FS)
    assert small["turns"] == base["turns"] == 3  # a 15 µV notch is below the 25 µV turn level
    assert big["turns"] == 5  # a 60 µV notch adds two reversals
    assert big["phases"] == 3  # ...but does not cross the baseline
    noisy = sine_muap(500, 9, 3) + np.where(np.abs(sine_muap(500, 9, 3)) < 1, 0, 0) \
        + 4 * np.random.default_rng(0).standard_normal(len(sine_muap(500, 9, 3)))
    assert muap_features(noisy, FS)["phases"] == 3  # ±4 µV noise at the baseline adds no phases


@pytest.fixture(scope="module")
def synthetic():
    """6 s of two units (triphasic 400 µV / 8 ms at 9 Hz; 6-phase 250 µV / 12 ms at 13 Hz,
    IDI CoV 0.1) in 6 µV white noise; discharge = template start."""
    rng = np.random.default_rng(7)
    n = int(6 * FS)
    x = 6.0 * rng.standard_normal(n)
    units = [dict(v=sine_muap(400, 8, 3, 0, 0), rate=9.0, amp=400, dur=8.0, ph=3),
             dict(v=sine_muap(250, 12, 6, 0, 0), rate=13.0, amp=250, dur=12.0, ph=6)]
    for u in units:
        t, sp = 0.05 + rng.uniform(0, 0.05), []
        while t < 5.9:
            sp.append(int(t * FS))
            t += (1 / u["rate"]) * (1 + 0.1 * rng.standard_normal())
        u["spikes"] = np.array(sp)
        for s in sp:
            x[s:s + len(u["v"])] += u["v"][: n - s]
    dec, rows, summary = analyze_recording(x.astype(np.float32), FS)
    return units, dec, rows, summary


def test_decomposition_recovers_known_units(synthetic):
    units, dec, rows, summary = synthetic
    assert dec.n_units >= 2
    for u in units:
        # the found unit whose discharges coincide (within the template length) with the true ones
        def hits(sp):
            d = np.abs(u["spikes"][:, None] - np.asarray(sp)[None, :] + 0.0)
            return np.mean(d.min(1) <= len(u["v"]))

        best = max(range(dec.n_units), key=lambda k: hits(dec.spikes[k]) - 0.5 * abs(rows[k]["amplitude_uv"]
                                                                                       - 2 * u["amp"]) / u["amp"])
        r = rows[best]
        assert hits(dec.spikes[best]) >= 0.85, "discharge recall (superimposed MUAPs included)"
        assert r["amplitude_uv"] == pytest.approx(2 * u["amp"], rel=0.10)
        assert r["duration_ms"] == pytest.approx(u["dur"], abs=1.0)
        assert r["phases"] == u["ph"]
        assert r["turns"] == pytest.approx(u["ph"], abs=1)
        assert r["rate_hz"] == pytest.approx(u["rate"], abs=0.7)
        assert 0.03 <= r["idi_cov"] <= 0.2
    assert summary["polyphasic_share"] == pytest.approx(
        np.mean([r["phases"] >= 5 for r in rows]))


def test_features_fast_enough(synthetic):
    import time

    _, dec, _, _ = synthetic
    x = np.tile(dec.x, 2)[: int(11.2 * FS)]
    t = time.perf_counter()
    analyze_recording(x, FS)
    assert time.perf_counter() - t < 3.0  # < 1 s on a quiet core (README); 3x margin for a shared CI CPU


@need_data
def test_wfdb_reader_metadata():
    from bmiss.io import load_recording
    from bmiss.needle.wfdb import load_wfdb

    rec = load_recording(REC)  # through the io registry (.hea)
    assert rec.n_channels == 1 and rec.n_samples == 262124 and rec.fs == pytest.approx(23437.5)
    m = rec.meta
    assert m["diagnosis"] == "ALS" and m["diagnosis_class"] == "ALS"
    assert m["subject"] == "N2001A01" and m["level"] == "low" and "Biceps brachii" in m["muscle"]
    assert 5 < float(np.std(rec.emg)) < 2000  # µV, gain 13.107 adu/µV applied
    c = load_wfdb(DATA / "N2001C02BB51.hea")
    assert c.meta["diagnosis_class"] == "control" and c.meta["subject"] == "N2001C02"


@need_data
def test_wfdb_reader_missing_signal(tmp_path):
    from bmiss.errors import BmissFileError
    from bmiss.needle.wfdb import load_wfdb

    (tmp_path / REC.name).write_text(REC.read_text())
    with pytest.raises(BmissFileError, match="signal file"):
        load_wfdb(tmp_path / REC.name)


@need_data
def test_cli_qemg(tmp_path, capsys):
    from bmiss.cli import main

    out, figs = tmp_path / "f.csv", tmp_path / "figs"
    assert main(["qemg", str(REC), "--out", str(out), "--figures", str(figs), "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("record,subject,diagnosis,unit") and len(lines) >= 3
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert row["subject"] == "N2001A01" and float(row["duration_ms"]) > 0 and int(row["phases"]) >= 1
    assert (figs / "N2001A01BB01_muaps.png").stat().st_size > 10_000
    assert main(["qemg", str(REC), "--out", str(out), "--quiet"]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def clf():
    from bmiss.needle.classify import default_weights, load_classifier

    assert default_weights().stat().st_size < 2_000_000
    return load_classifier()


def test_shipped_classifier_probabilities(clf, synthetic):
    from bmiss.io import Recording

    _, dec, _, summary = synthetic
    p = clf.predict(Recording(emg=dec.x[None], fs=FS), summary=summary)
    assert set(p) == {"features", "cnn", "combined"}
    for v in p.values():
        assert v.shape == (3,) and np.all(v >= 0) and v.sum() == pytest.approx(1.0, abs=1e-5)


@need_data
def test_cli_classify(tmp_path, capsys, clf):
    from bmiss.cli import main

    js = tmp_path / "p.json"
    assert main(["classify", str(REC), "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "per subject" in out and "N2001A01" in out
    d = json.loads(js.read_text())
    assert d["subjects"][0]["subject"] == "N2001A01"
    for m in ("features", "cnn", "combined"):
        assert sum(d["recordings"][0][m].values()) == pytest.approx(1.0, abs=1e-5)
