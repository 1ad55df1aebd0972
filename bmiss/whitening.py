"""One home for ZCA whitening with a floored spectrum (the decomposition's and the deconvolution's).

``W = E diag(1/sqrt(max(d, floor))) E^T`` for ``C = E diag(d) E^T``; ``floor`` is the mean of the
smaller half of the eigenvalues (MUedit's regularisation of the extended covariance,
shared/reference.md §2), and at least ``1e-12`` of the largest so a rank-deficient ``C`` stays finite.
"""
from __future__ import annotations

import numpy as np

__all__ = ["zca"]


def zca(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(W, eigvals, eigvecs, floor)`` of the symmetric covariance ``C`` [n, n] (float64 throughout).

    Examples
    --------
    >>> W, d, E, floor = zca(np.cov(x))  # x [n_channels, n_samples]  # doctest: +SKIP
    """
    C = np.asarray(C, np.float64)
    C = 0.5 * (C + C.T)
    d, E = np.linalg.eigh(C)
    floor = float(np.mean(d[: max(1, len(d) // 2)]))
    floor = max(floor, 1e-12 * max(float(d[-1]), 1e-300))
    W = (E * (1.0 / np.sqrt(np.maximum(d, floor)))) @ E.T
    return W, d, E, floor
