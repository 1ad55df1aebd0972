"""Tests for bmiss.motoneurons (Fuglevand 1993 pool, excitation profiles, spike trains)."""
import jax
import numpy as np
import pytest

from bmiss import motoneurons as mn

FS = 2048.0
DUR = 10.0  # every simulation below uses this length and N so that one compile serves all
N = 8
LEVEL = 0.3  # with N=8 and the defaults, units 0..5 are recruited and 6..7 are not


@pytest.fixture(scope="module")
def pool():
    return mn.make_pool(N)


@pytest.fixture(scope="module")
def const_trains(pool):
    return mn.spike_trains(pool, mn.constant(LEVEL, DUR, FS), FS, jax.random.key(0))


# ------------------------------------------------------------------ pool
def test_thresholds_increase_and_end_at_recruitment_end():
    p = mn.make_pool(20, recruitment_end=0.6)
    thr = np.asarray(p.thresholds)
    assert thr.shape == (20,)
    assert np.all(np.diff(thr) > 0)
    assert thr[-1] == pytest.approx(0.6, rel=1e-6)
    # Fuglevand spacing: consecutive threshold ratio is RR^(1/N).
    np.testing.assert_allclose(thr[1:] / thr[:-1], 30.0 ** (1 / 20), rtol=1e-5)


def test_peak_rates_gains_and_fibres(pool):
    peak = np.asarray(pool.peak_rates_hz)
    assert peak[0] == pytest.approx(35.0) and peak[-1] == pytest.approx(25.0)
    assert np.all(np.diff(peak) < 0)
    # Every unit reaches its own peak rate exactly at full excitation.
    np.testing.assert_allclose(np.asarray(mn.discharge_rates(pool, 1.0)), peak, rtol=1e-5)
    # At threshold the unit discharges at its minimum rate.
    at_thr = np.diag(np.asarray(mn.discharge_rates(pool, pool.thresholds)))
    np.testing.assert_allclose(at_thr, 8.0, rtol=1e-5)
    fib = np.asarray(pool.n_fibres)
    assert np.all(np.diff(fib) > 0)
    assert fib[0] == pytest.approx(25) and fib[-1] == pytest.approx(900)


def test_make_pool_rejects_bad_arguments():
    for kw in ({"recruitment_end": 1.0}, {"recruitment_range": 1.0}, {"min_rate_hz": 40.0},
               {"fibres_min": 1000}, {"isi_cov": -0.1}):
        with pytest.raises(ValueError):
            mn.make_pool(10, **kw)
    with pytest.raises(ValueError):
        mn.make_pool(0)


# ------------------------------------------------------------------ spike trains
def test_rate_and_isi_cov_at_constant_excitation(pool, const_trains):
    expected = np.asarray(mn.discharge_rates(pool, LEVEL))
    active = np.asarray(pool.thresholds) <= LEVEL
    assert active.sum() == 6
    for u in np.flatnonzero(active):
        s = const_trains[u]
        assert s.dtype == np.int64 and np.all(np.diff(s) > 0)
        isi = np.diff(s) / FS
        assert FS / np.diff(s).mean() == pytest.approx(expected[u], rel=0.10)
        assert len(s) / DUR == pytest.approx(expected[u], rel=0.10)
        assert 0.10 <= isi.std() / isi.mean() <= 0.20
        assert isi.min() >= mn.ISI_MIN_S - 1 / FS


def test_units_above_excitation_never_fire(pool, const_trains):
    thr = np.asarray(pool.thresholds)
    assert len(const_trains) == N
    for u in np.flatnonzero(thr > LEVEL):
        assert const_trains[u].size == 0


def test_same_key_reproducible_different_key_differs(pool, const_trains):
    e = mn.constant(LEVEL, DUR, FS)
    again = mn.spike_trains(pool, e, FS, jax.random.key(0))
    assert all(np.array_equal(a, b) for a, b in zip(const_trains, again))
    other = mn.spike_trains(pool, e, FS, jax.random.key(1))
    assert not all(np.array_equal(a, b) for a, b in zip(const_trains, other))


def test_first_discharge_at_random_phase(pool):
    firsts = np.array([mn.spike_trains(pool, mn.constant(LEVEL, DUR, FS), FS,
                                       jax.random.key(k))[0][0] for k in range(2, 6)])
    isi0 = FS / float(mn.discharge_rates(pool, LEVEL)[0])
    assert np.all(firsts < 1.6 * isi0)  # within about one ISI of onset...
    assert len(set(firsts.tolist())) > 1  # ...but not locked to it


def test_time_varying_excitation_respects_thresholds(pool):
    e = mn.trapezoid(0.5, DUR, FS, ramp_s=3.0)
    trains = mn.spike_trains(pool, e, FS, jax.random.key(3))
    thr = np.asarray(pool.thresholds)
    for u, s in enumerate(trains):
        assert np.all(e[s] >= thr[u])
        if thr[u] <= 0.5:
            assert s.size > 0
    # Later-recruited units start later on the up-ramp.
    starts = [s[0] for s in trains if s.size]
    assert starts[0] < starts[-1]


def test_explicit_small_buffer_truncates_with_warning_and_prefix_matches(pool, const_trains):
    with pytest.warns(UserWarning, match="truncated"):
        short = mn.spike_trains(pool, mn.constant(LEVEL, DUR, FS), FS, jax.random.key(0),
                                max_spikes=20)
    for a, b in zip(short, const_trains):
        assert np.array_equal(a, b[: len(a)])


def test_spike_trains_rejects_out_of_range_excitation(pool):
    with pytest.raises(ValueError):
        mn.spike_trains(pool, np.full(100, 1.5, np.float32), FS, jax.random.key(0))


# ------------------------------------------------------------------ excitation profiles
def test_trapezoid_shape():
    e = mn.trapezoid(0.5, 10.0, 100.0, ramp_s=2.0)
    assert e.dtype == np.float32 and e.shape == (1000,)
    assert e[0] == 0.0 and e.max() == pytest.approx(0.5)
    up, plateau, down = e[:200], e[200:800], e[800:]
    assert np.all(np.diff(up) > 0) and np.all(np.diff(down) < 0)
    np.testing.assert_allclose(plateau, 0.5, rtol=1e-6)
    assert e[100] == pytest.approx(0.25, abs=1e-3)  # halfway up the ramp
    assert e[-1] < 0.01


def test_constant_and_sinusoid():
    c = mn.constant(0.3, 2.0, 1000.0)
    assert c.shape == (2000,) and c.dtype == np.float32 and np.all(c == np.float32(0.3))
    s = mn.sinusoid(0.3, 0.1, 1.0, 2.0, 1000.0)
    assert s.shape == (2000,)
    assert s.min() == pytest.approx(0.2, abs=1e-4) and s.max() == pytest.approx(0.4, abs=1e-4)
    assert s[250] == pytest.approx(0.4, abs=1e-4)  # quarter period
    with pytest.raises(ValueError):
        mn.sinusoid(0.9, 0.2, 1.0, 2.0, 1000.0)


def test_parse_excitation_valid_specs(tmp_path):
    np.testing.assert_array_equal(mn.parse_excitation("constant:0.3", 2.0, 100.0),
                                  mn.constant(0.3, 2.0, 100.0))
    np.testing.assert_array_equal(mn.parse_excitation("trapezoid:0.5:ramp=0.5", 2.0, 100.0),
                                  mn.trapezoid(0.5, 2.0, 100.0, ramp_s=0.5))
    np.testing.assert_array_equal(mn.parse_excitation("sinusoid:0.3:0.1:1.0", 2.0, 100.0),
                                  mn.sinusoid(0.3, 0.1, 1.0, 2.0, 100.0))
    ramp = np.linspace(0.0, 1.0, 11)
    np.save(tmp_path / "ramp.npy", ramp)
    x = mn.parse_excitation(f"file:{tmp_path / 'ramp.npy'}", 2.0, 100.0)
    assert x.shape == (200,) and x.dtype == np.float32
    assert x[0] == 0.0 and x[-1] == pytest.approx(1.0) and np.all(np.diff(x) > 0)
    exact = np.full(200, 0.2)
    np.save(tmp_path / "exact.npy", exact)
    np.testing.assert_allclose(mn.parse_excitation(f"file:{tmp_path / 'exact.npy'}", 2.0, 100.0),
                               exact)


@pytest.mark.parametrize("spec", [
    "", "constant", "constant:abc", "constant:1.5", "constant:0.2:0.3", "constant:nan",
    "trapezoid:0.5:ramp=9", "trapezoid:0.5:slope=2", "sinusoid:0.3:0.1",
    "sinusoid:0.9:0.2:1", "square:0.3", "file:",
])
def test_parse_excitation_bad_specs(spec):
    with pytest.raises(ValueError, match="expected"):
        mn.parse_excitation(spec, 10.0, 100.0)


def test_parse_excitation_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        mn.parse_excitation(f"file:{tmp_path / 'missing.npy'}", 1.0, 100.0)
    np.save(tmp_path / "high.npy", np.array([0.1, 1.2, 0.3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mn.parse_excitation(f"file:{tmp_path / 'high.npy'}", 1.0, 100.0)
    np.save(tmp_path / "grid.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="1-D"):
        mn.parse_excitation(f"file:{tmp_path / 'grid.npy'}", 1.0, 100.0)
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="cannot read"):
        mn.parse_excitation(f"file:{tmp_path / 'junk.npy'}", 1.0, 100.0)
