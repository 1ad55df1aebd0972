"""Neuromuscular-disease classification of needle-EMG recordings (ALS / control / myopathy).

Three models, all giving class probabilities per recording; a subject's probabilities are the
normalised geometric mean over its recordings (mean log-probability):

(a) **features**: multinomial logistic regression (L2, numpy/scipy L-BFGS) on the recording-level
    MUAP summary of :func:`bmiss.needle.features.summarize` (standardised; missing values -> the
    training median). Its coefficients are readable: which feature pushes towards which class.
(b) **cnn**: a small Flax NNX 1-D CNN on raw segments (the approach of the deep-learning studies on
    N2001): the signal is decimated to ``CNN_FS`` (3.9 kHz), cut into ``SEG`` -sample segments
    (0.52 s) and scaled by a fixed 1/``SCALE_UV``; a recording's log-probability is the mean over
    its segments.
(c) **combined**: the normalised geometric mean of (a) and (b) with equal weights (fixed a
    priori, not tuned on the test subjects).

Evaluation (:func:`loso`) is only leave-one-subject-out: every model is refitted without the
test subject, so no recording of a test subject is ever seen in training.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .wfdb import CLASSES

__all__ = ["CNN_FS", "SEG", "SCALE_UV", "cnn_input", "FeatureModel", "fit_features", "CNN", "train_cnn",
           "cnn_logprob", "subject_logprob", "combine", "NeedleClassifier", "load_classifier", "default_weights",
           "balanced_accuracy", "confusion", "bootstrap_ci"]

CNN_FS = 23437.5 / 6  # Hz
SEG = 2048  # samples at CNN_FS (0.52 s)
SCALE_UV = 300.0


def default_weights() -> Path:
    """Path of the shipped classifier (trained on all 22 N2001 subjects by experiments/train_needle.py)."""
    return Path(__file__).resolve().parents[1] / "data" / "needle_n2001.npz"


# ------------------------------------------------------------------ inputs
def cnn_input(x, fs: float) -> np.ndarray:
    """Raw needle signal (µV) -> decimated, scaled signal at :data:`CNN_FS` (float32).

    Band-pass 5 Hz - 0.4 CNN_FS (zero-phase), then resampling by a rational factor.
    """
    import scipy.signal

    x = np.asarray(x, np.float64).ravel()
    sos = scipy.signal.butter(4, [5.0, 0.4 * CNN_FS], btype="bandpass", fs=fs, output="sos")
    y = scipy.signal.sosfiltfilt(sos, x)
    from fractions import Fraction

    fr = Fraction(CNN_FS / fs).limit_denominator(64)
    y = scipy.signal.resample_poly(y, fr.numerator, fr.denominator) if fr != 1 else y
    return (y / SCALE_UV).astype(np.float32)


def segments(y: np.ndarray, seg: int = SEG, hop: int | None = None) -> np.ndarray:
    """[n_seg, seg] non-overlapping (or ``hop``-spaced) segments of a 1-D signal."""
    hop = hop or seg
    n = max(0, (len(y) - seg) // hop + 1)
    if n == 0:
        return np.zeros((0, seg), np.float32)
    return np.stack([y[i * hop:i * hop + seg] for i in range(n)]).astype(np.float32)


# ------------------------------------------------------------------ (a) logistic regression
def _softmax_log(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class FeatureModel:
    """Multinomial logistic regression on standardised features.

    Attributes: names [F], median/mean/std [F] (imputation and scaling), W [F, K], b [K].
    """

    def __init__(self, names, median, mean, std, W, b, transform):
        self.names, self.median, self.mean, self.std = list(names), median, mean, std
        self.W, self.b, self.transform = W, b, np.asarray(transform, bool)

    @staticmethod
    def prepare(X: np.ndarray, transform: np.ndarray) -> np.ndarray:
        X = np.array(X, np.float64)
        X[:, transform] = np.sign(X[:, transform]) * np.log1p(np.abs(X[:, transform]))
        return X

    def z(self, X) -> np.ndarray:
        X = self.prepare(X, self.transform)
        X = np.where(np.isfinite(X), X, self.median)
        return np.clip((X - self.mean) / self.std, -5, 5)

    def logprob(self, X) -> np.ndarray:
        """[n, K] log class probabilities."""
        return _softmax_log(self.z(X) @ self.W + self.b)


_LOG_FEATURES = ("duration", "amplitude", "area", "thickness", "n_units", "per_s", "rms", "freq", "turns")


def fit_features(X, y, names, *, l2: float = 1.0, sample_weight=None) -> FeatureModel:
    """Fit (a) by L-BFGS on the mean weighted cross-entropy + ``l2`` / n * ||W||^2 / 2.

    Examples
    --------
    >>> m = fit_features(np.random.default_rng(0).normal(size=(30, 2)), np.arange(30) % 3, ["a", "b"])
    >>> np.allclose(np.exp(m.logprob(np.zeros((1, 2)))).sum(), 1.0)
    True
    """
    import scipy.optimize

    y = np.asarray(y, np.int64)
    K = len(CLASSES)
    transform = np.array([any(t in n for t in _LOG_FEATURES) and "size_index" not in n for n in names])
    Xp = FeatureModel.prepare(X, transform)
    med = np.nanmedian(np.where(np.isfinite(Xp), Xp, np.nan), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    Xp = np.where(np.isfinite(Xp), Xp, med)
    mu, sd = Xp.mean(0), Xp.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    Z = np.clip((Xp - mu) / sd, -5, 5)
    n, F = Z.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    Y = np.eye(K)[y]

    def loss(theta):
        W, b = theta[:F * K].reshape(F, K), theta[F * K:]
        lp = _softmax_log(Z @ W + b)
        L = -np.sum(w[:, None] * Y * lp) + 0.5 * l2 / n * np.sum(W * W)
        G = w[:, None] * (np.exp(lp) - Y)
        return L, np.concatenate([(Z.T @ G + l2 / n * W).ravel(), G.sum(0)])

    res = scipy.optimize.minimize(loss, np.zeros(F * K + K), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 500})
    return FeatureModel(names, med, mu, sd, res.x[:F * K].reshape(F, K), res.x[F * K:], transform)


# ------------------------------------------------------------------ (b) CNN
def CNN(rngs, width: int = 8):
    """The 1-D CNN (Flax NNX): 4 conv blocks (kernel 7, stride-2 max-pool, ReLU), global mean and
    max pooling, a linear head. Input [B, SEG] -> logits [B, 3]."""
    from flax import nnx
    import jax.numpy as jnp

    class _Net(nnx.Module):
        def __init__(self, rngs):
            ch = [1, width, width * 2, width * 2, width * 4]
            self.convs = nnx.List([nnx.Conv(ch[i], ch[i + 1], kernel_size=(7,), rngs=rngs) for i in range(4)])
            self.head = nnx.Linear(2 * ch[-1], len(CLASSES), rngs=rngs)

        def __call__(self, x):
            h = x[..., None]
            for i, conv in enumerate(self.convs):
                h = nnx.relu(conv(h))
                h = nnx.max_pool(h, window_shape=(4 if i == 0 else 2,), strides=(4 if i == 0 else 2,))
            h = jnp.concatenate([h.mean(axis=1), h.max(axis=1)], axis=-1)
            return self.head(h)

    return _Net(rngs)


_JIT: dict = {}


def _train_fns(width: int, steps: int, lr: float):
    """(graphdef, tx, jitted step) for one network width and schedule, built once per process:
    every leave-one-subject-out fold reuses the compiled step."""
    key = (width, steps, lr)
    if key not in _JIT:
        import jax
        import optax
        from flax import nnx

        graphdef, _ = nnx.split(CNN(nnx.Rngs(0), width))
        tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)

        def loss_fn(params, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(xb), yb).mean()

        @jax.jit
        def step(params, opt_state, xb, yb):
            loss, g = jax.value_and_grad(loss_fn)(params, xb, yb)
            upd, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, upd), opt_state, loss

        _JIT[key] = (graphdef, tx, step)
    return _JIT[key]


def train_cnn(segs: np.ndarray, y: np.ndarray, *, seed: int = 0, steps: int = 300, batch: int = 32,
              lr: float = 3e-3, width: int = 8, sample_weight=None, progress: bool = False):
    """Train the CNN on segments [n, SEG] with labels [n] (sampling by ``sample_weight``).

    AdamW (cosine decay from ``lr``), batches drawn with replacement, augmentation by random sign
    (needle polarity) and circular shift. Returns the trained NNX module. Every random draw comes
    from ``seed``.

    Examples
    --------
    >>> m = train_cnn(np.zeros((8, SEG), np.float32), np.arange(8) % 3, steps=2)  # doctest: +SKIP
    """
    import jax.numpy as jnp
    from flax import nnx

    graphdef, tx, step = _train_fns(width, steps, lr)
    _, params = nnx.split(CNN(nnx.Rngs(seed), width))
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    p = None if sample_weight is None else np.asarray(sample_weight, np.float64) / np.sum(sample_weight)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="cnn", leave=False)
    for _ in it:
        i = rng.choice(len(segs), size=batch, p=p)
        xb = segs[i] * rng.choice([-1.0, 1.0], size=(batch, 1)).astype(np.float32)
        xb = np.roll(xb, int(rng.integers(0, segs.shape[1])), axis=1)
        params, opt_state, _ = step(params, opt_state, jnp.asarray(xb), jnp.asarray(y[i]))
    return nnx.merge(graphdef, params)


def _logprob_fn():
    if "logprob" not in _JIT:
        import jax
        from flax import nnx

        _JIT["logprob"] = nnx.jit(lambda m, x: jax.nn.log_softmax(m(x), axis=-1))
    return _JIT["logprob"]


def cnn_logprob(model, segs: np.ndarray, batch: int = 128) -> np.ndarray:
    """[n, K] log-probabilities of segments [n, SEG]."""
    import jax.numpy as jnp

    f = _logprob_fn()
    out = []
    for i in range(0, len(segs), batch):
        xb = segs[i:i + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, segs.shape[1]), np.float32)])
        out.append(np.asarray(f(model, jnp.asarray(xb)))[:batch - pad])
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)))


# ------------------------------------------------------------------ aggregation and metrics
def subject_logprob(lp: np.ndarray) -> np.ndarray:
    """Normalised mean log-probability over rows (recordings or segments): [K]."""
    return _softmax_log(np.asarray(lp).mean(axis=0))


def combine(*lps) -> np.ndarray:
    """Normalised geometric mean (equal weights) of several [n, K] log-probabilities."""
    return _softmax_log(np.mean(np.stack(lps), axis=0))


def confusion(y_true, y_pred, K: int = len(CLASSES)) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted."""
    C = np.zeros((K, K), np.int64)
    np.add.at(C, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return C


def balanced_accuracy(y_true, y_pred, K: int = len(CLASSES)) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    C = confusion(y_true, y_pred, K)
    n = C.sum(1)
    return float(np.mean(np.diag(C)[n > 0] / n[n > 0]))


def bootstrap_ci(subjects, y_true, y_pred, metric, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile interval of ``metric(y_true, y_pred)`` resampling subjects with replacement
    (all rows of a drawn subject come along). Returns (low, high)."""
    subjects = np.asarray(subjects)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    subs = np.unique(subjects)
    rows = {s: np.flatnonzero(subjects == s) for s in subs}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[s] for s in rng.choice(subs, size=len(subs), replace=True)])
        vals.append(metric(y_true[idx], y_pred[idx]))
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


# ------------------------------------------------------------------ shipped classifier
class NeedleClassifier:
    """The shipped models: (a) features, (b) CNN, (c) their combination.

    Examples
    --------
    >>> clf = load_classifier()  # doctest: +SKIP
    >>> clf.predict(rec)["combined"]  # doctest: +SKIP
    """

    def __init__(self, feat: FeatureModel, cnn, meta: dict):
        self.feat, self.cnn, self.meta = feat, cnn, meta

    def predict(self, rec, summary: dict | None = None) -> dict:
        """Class probabilities of one recording: {"features": [K], "cnn": [K], "combined": [K]}."""
        from .features import analyze_recording

        if summary is None:
            _, _, summary = analyze_recording(rec)
        lp = self.logprob(np.array([[summary.get(n, np.nan) for n in self.feat.names]]),
                          segments(cnn_input(rec.emg[0], rec.fs)))
        return {k: np.exp(v) for k, v in lp.items()}

    def logprob(self, X_row, segs) -> dict:
        a = self.feat.logprob(X_row)[0]
        b = subject_logprob(cnn_logprob(self.cnn, segs)) if len(segs) else np.full(len(CLASSES), -np.log(3))
        return {"features": a, "cnn": b, "combined": combine(a[None], b[None])[0]}


def save_classifier(path, feat: FeatureModel, cnn, meta: dict, *, force: bool = True) -> Path:
    """Write both models to one ``.npz`` (CNN parameters flattened by path; meta as JSON)."""
    from flax import nnx

    from ..files import atomic_write

    state = nnx.state(cnn, nnx.Param)
    flat = {"cnn/" + "/".join(str(k) for k in path_): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
            for path_, v in nnx.to_flat_state(state)}
    arrays = {"feat/median": feat.median, "feat/mean": feat.mean, "feat/std": feat.std, "feat/W": feat.W,
              "feat/b": feat.b, "feat/transform": feat.transform,
              "meta": np.frombuffer(json.dumps({**meta, "feature_names": feat.names}).encode(), np.uint8), **flat}
    def _write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(f, **arrays)

    return atomic_write(path, _write, force=force)


def load_classifier(path=None) -> NeedleClassifier:
    """Load the shipped (or a given) classifier."""
    import jax.numpy as jnp
    from flax import nnx

    from ..errors import BmissFileError

    path = Path(path) if path else default_weights()
    if not path.exists():
        raise BmissFileError(f"{path}: no trained needle classifier (run experiments/train_needle.py)")
    z = np.load(path, allow_pickle=False)
    meta = json.loads(bytes(z["meta"]).decode())
    feat = FeatureModel(meta["feature_names"], z["feat/median"], z["feat/mean"], z["feat/std"], z["feat/W"],
                        z["feat/b"], z["feat/transform"])
    cnn = CNN(nnx.Rngs(0), meta.get("width", 8))
    state = nnx.state(cnn, nnx.Param)
    flat = nnx.to_flat_state(state)
    for path_, v in flat:
        key = "cnn/" + "/".join(str(k) for k in path_)
        v.set_value(jnp.asarray(z[key])) if hasattr(v, "set_value") else setattr(v, "value", jnp.asarray(z[key]))
    nnx.update(cnn, nnx.from_flat_state(flat))
    return NeedleClassifier(feat, cnn, meta)
