"""Neural drive: rates, cumulative spike train, correlation with the excitation, writers."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bmiss import drive as dv
from bmiss import motoneurons as mn

FS = 2048.0


def test_rates_of_a_regular_train():
    n = int(10 * FS)
    sp = np.arange(1000, n - 1000, int(FS / 16))  # 16 Hz
    t, r = dv.instantaneous_rate(sp, FS)
    assert len(t) == len(sp) - 1 and np.allclose(r, FS / int(FS / 16))
    sm = dv.smoothed_rate(sp, FS, n)
    inside = slice(sp[0] + 1000, sp[-1] - 1000)
    assert np.allclose(sm[inside], FS / int(FS / 16), rtol=1e-6)
    assert np.isnan(sm[: sp[0]]).all() and np.isnan(sm[sp[-1] + 1:]).all()
    # a pause longer than max_isi_s is silence, not a 1-Hz rate
    gap = np.concatenate([sp[sp < 5000], sp[sp > 9000]])
    _, r2 = dv.instantaneous_rate(gap, FS)
    assert np.isnan(r2).sum() == 1
    assert np.isnan(dv.held_rate(gap, FS, n)[6000:8000]).all()


def test_cst_and_smoothed_cst_units():
    n = int(6 * FS)
    trains = [np.arange(500 + 37 * k, n - 500, int(FS / 10)) for k in range(5)]  # 5 units at ~10 Hz
    cst = dv.cumulative_spike_train(trains, n)
    assert cst.sum() == sum(len(s) for s in trains) and cst.dtype == np.int64
    d = dv.neural_drive(trains, FS, n, window_s=1.0)
    mid = slice(int(2 * FS), int(4 * FS))
    assert np.allclose(d.drive_pps[mid], 5 * FS / int(FS / 10), rtol=0.02)
    assert np.allclose(d.mean_rate_hz[mid], FS / int(FS / 10), rtol=0.02)
    assert d.rates_hz.shape == (5, n) and len(d.idr) == 5


@pytest.mark.parametrize("spec", ["trapezoid:0.3:ramp=2", "sinusoid:0.3:0.1:0.5"])
def test_drive_follows_the_excitation(spec):
    """True discharges of the units a decomposition could find (12 of a 60-unit pool)."""
    pool = mn.make_pool(60)
    exc = mn.parse_excitation(spec, 12.0, FS)
    sp = mn.spike_trains(pool, exc, FS, jax.random.PRNGKey(0))
    found = [s for s in sp if len(s) >= 30][:12]
    assert len(found) >= 10
    d = dv.neural_drive(found, FS, len(exc))
    r = dv.drive_correlation(d, exc)["r"]
    assert r >= 0.95, r
    # the same trains against a reference that does not match (time-reversed sinusoid / shifted
    # trapezoid) correlate far less: the test could fail
    wrong = np.roll(exc, int(1.0 * FS)) if spec.startswith("sinusoid") else np.roll(exc, int(3.0 * FS))
    assert dv.drive_correlation(d, wrong)["r"] < r - 0.15


def test_drive_lag_search():
    n = int(8 * FS)
    pool = mn.make_pool(30)
    exc = mn.sinusoid(0.3, 0.1, 0.5, 8.0, FS)
    sp = mn.spike_trains(pool, exc, FS, jax.random.PRNGKey(3))
    d = dv.neural_drive(sp, FS, n)
    lagged = np.roll(exc, int(0.15 * FS))  # a "force" 150 ms behind the drive
    own = dv.drive_correlation(d, exc, max_lag_s=0.3)
    res = dv.drive_correlation(d, lagged, max_lag_s=0.3)
    assert abs(res["lag_s"] - own["lag_s"] - 0.15) <= 0.011 and res["r"] > 0.95


def test_writers(tmp_path):
    n = int(3 * FS)
    trains = [np.arange(300, n - 300, 200), np.arange(400, n - 300, 150)]
    d = dv.neural_drive(trains, FS, n)
    ref = np.linspace(0, 1, n)
    p = dv.save_drive_csv(tmp_path / "drive.csv", d, reference=ref, reference_name="excitation",
                          reference_unit="fraction")
    lines = p.read_text().splitlines()
    assert lines[0] == "time_s,cst_smoothed_pps,mean_rate_hz,excitation,mu0_rate_hz,mu1_rate_hz"
    assert lines[1] == "# units,pps,Hz,fraction,Hz,Hz"
    assert len(lines) == 2 + len(range(0, n, int(round(FS / 100))))
    j = dv.save_drive_json(tmp_path / "drive.json", d, reference=ref)
    doc = json.loads(j.read_text())
    assert doc["n_units"] == 2 and len(doc["idr"]) == 2 and len(doc["time_s"]) == len(doc["cst_smoothed_pps"])
    assert doc["rates_hz"][0][0] is None  # silent before the first discharge: null, not NaN
    with pytest.raises(FileExistsError):
        dv.save_drive_csv(tmp_path / "drive.csv", d)
    with pytest.raises(ValueError, match="window_s"):
        dv.neural_drive(trains, FS, n, window_s=0)


def test_drive_figure(tmp_path):
    from bmiss import figures

    n = int(4 * FS)
    pool = mn.make_pool(20)
    exc = mn.trapezoid(0.3, 4.0, FS, ramp_s=1.0)
    sp = mn.spike_trains(pool, exc, FS, jax.random.PRNGKey(4))
    d = dv.neural_drive(sp, FS, n)
    fig = figures.drive_rates(d, exc, tmp_path / "drive.png")
    png = tmp_path / "drive.png"
    assert png.stat().st_size > 10_000
    assert len(fig.axes) == 4  # two panels, each with the reference on a twin axis
    with pytest.raises(ValueError, match="one value per EMG sample"):
        figures.drive_rates(d, exc[:-5])
