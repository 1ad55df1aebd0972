"""The shipped MUAP surrogate: loading, shape, gradients, agreement with the conductor, bounds,
anatomy checks, and a tiny train + resume run of experiments/train_surrogate.py."""
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bmiss import anatomy
from bmiss import surrogate as S
from bmiss.conductor import PARAM_NAMES, Conductor, muaps

ROOT = Path(__file__).resolve().parents[1]
P0 = np.array([8.0, 0.0, np.log(200.0), 0.0, 4.0, 120.0], np.float32)


@pytest.fixture(scope="module")
def biceps():
    a = anatomy.load("biceps_brachii")
    return a, S.load_surrogate(a)


def test_loads_with_metadata_and_shape(biceps):
    a, s = biceps
    assert (s.n_channels, s.n_samples) == (64, 96)
    assert s.meta["anatomy"] == "biceps_brachii"
    for k in ("grid", "bounds", "validation_error", "training", "n_channels", "n_samples"):
        assert k in s.meta
    m = np.asarray(s.muap(P0))
    assert m.shape == (64, 96) and np.isfinite(m).all()
    # same signature as Conductor.muap: shift and tissue are accepted (and ignored)
    np.testing.assert_allclose(np.asarray(s.muap(P0, 0.0, None)), m)
    assert s.muaps(np.stack([P0, P0])).shape == (2, 64, 96)


def test_differentiable(biceps):
    _, s = biceps
    w = np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32)
    g = np.asarray(jax.grad(lambda p: (s.muap(p) * w).sum())(P0))
    assert g.shape == (6,) and np.isfinite(g).all() and np.abs(g).max() > 0


def test_gradients_agree_with_the_conductor(biceps):
    """d(MUAP)/d(p_j) of the surrogate points the same way as the conductor's, per parameter.

    Measured on 8 held-out draws (seed 424242): cosine >= 0.992 for depth, x, log fibres, IZ and
    length, 0.73-0.87 for CV (the conductor's own CV derivative is coarse at its 0.5 mm source
    step; README, Surrogate). Thresholds leave a margin under those.
    """
    a, s = biceps
    P = np.asarray(S.sample_params(a, 6, seed=424242))
    cond = Conductor.from_anatomy(a)
    jc, js = jax.jit(jax.jacfwd(cond.muap)), jax.jit(jax.jacfwd(s.muap))
    Jc = np.stack([np.asarray(jc(p)) for p in P]).reshape(len(P), -1, 6)  # [draw, channel*time, param]
    Js = np.stack([np.asarray(js(p)) for p in P]).reshape(len(P), -1, 6)
    cos = (Jc * Js).sum(1) / (np.linalg.norm(Jc, axis=1) * np.linalg.norm(Js, axis=1))  # [draw, param]
    names = list(PARAM_NAMES)
    for j in (0, 1, 2, 3, 5):  # depth, x, log fibres, IZ, length
        assert cos[:, j].min() > 0.97, (names[j], cos[:, j])
    assert np.median(cos[:, 4]) > 0.7 and cos[:, 4].min() > 0.55, ("cv", cos[:, 4])


def test_matches_conductor_on_held_out_draws(biceps):
    a, s = biceps
    P = S.sample_params(a, 6, seed=987654)  # not the training seed
    ref = np.asarray(muaps(Conductor.from_anatomy(a), P, batch_size=6))
    out = np.asarray(s.muaps(P))
    err = np.linalg.norm((out - ref).reshape(6, -1), axis=1) / np.linalg.norm(ref.reshape(6, -1), axis=1)
    # benchmark (experiments/bench_surrogate.py, 1000 draws): median 0.041, p95 0.048, max 0.076
    assert np.median(err) < 0.08, err
    assert err.max() < 0.15, err


def test_out_of_bounds_clipped_with_one_warning(biceps):
    a, _ = biceps
    s = S.load_surrogate(a)  # fresh instance: the warning is once per instance
    hi = s.hi
    p = P0.copy()
    p[0] = 80.0  # far deeper than the muscle
    with pytest.warns(UserWarning, match="clipped"):
        m = np.asarray(s.muap(p))
    q = p.copy()
    q[0] = hi[0]
    np.testing.assert_allclose(m, np.asarray(s.muap(q)), rtol=1e-5, atol=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        s.muap(p)


def test_out_of_bounds_warns_under_jit():
    s = S.load_surrogate("biceps_brachii")
    p = P0.copy()
    p[4] = 9.0  # CV 9 m/s
    f = jax.jit(lambda p: s.muap(p).sum())
    with pytest.warns(UserWarning, match="clipped"):
        jax.block_until_ready(f(p))


def test_other_anatomy_is_refused_naming_both():
    tib = anatomy.load("tibialis_anterior")
    with pytest.raises(FileNotFoundError) as e:
        S.load_surrogate(tib)
    assert "tibialis_anterior" in str(e.value) and "biceps_brachii" in str(e.value)
    with pytest.raises(S.SurrogateMismatchError) as e:
        S.load_surrogate(tib, path=S.shipped_path("biceps_brachii"))
    assert "tibialis_anterior" in str(e.value) and "biceps_brachii" in str(e.value)
    # same name, other grid: refused too
    a = anatomy.load("biceps_brachii").with_grid(montage="single_differential")
    with pytest.raises(S.SurrogateMismatchError, match="montage"):
        S.load_surrogate(a)


def test_latin_hypercube_strata():
    u = S.latin_hypercube(50, 6, np.random.default_rng(1))
    assert u.shape == (50, 6) and (u >= 0).all() and (u < 1).all()
    for j in range(6):
        assert sorted(np.floor(u[:, j] * 50).astype(int)) == list(range(50))
    np.testing.assert_array_equal(u, S.latin_hypercube(50, 6, np.random.default_rng(1)))


def _train_module():
    spec = importlib.util.spec_from_file_location("train_surrogate", ROOT / "experiments" / "train_surrogate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_train_run_is_loadable_and_resumes(tmp_path):
    train = _train_module()
    argv = ["--anatomy", "biceps_brachii", "--n-train", "16", "--n-val", "4", "--n-test", "4", "--batch", "16",
            "--hidden", "8", "--depth", "1", "--n-basis", "4", "--out", str(tmp_path), "--no-progress"]
    r1 = train.main(argv + ["--epochs", "1"])
    assert r1["start_epoch"] == 0
    assert (tmp_path / "checkpoint.npz").exists() and (tmp_path / "data.npz").exists()
    s = S.load_surrogate("biceps_brachii", path=tmp_path / "surrogate.npz")
    assert s.muap(P0).shape == (64, 96)
    meta = json.loads((tmp_path / "surrogate.json").read_text())
    assert meta["anatomy"] == "biceps_brachii" and meta["training"]["data_seed"] == 0
    with np.load(tmp_path / "surrogate.npz", allow_pickle=False) as z:  # arrays only, no pickle
        assert all(z[k].dtype != object for k in z.files)
    r2 = train.main(argv + ["--epochs", "2"])  # continues after epoch 1, reusing the cached data
    assert r2["start_epoch"] == 1
    assert len(json.loads((tmp_path / "surrogate.json").read_text())["history"]) == 2
