"""One home for trained networks' weights on disk: a Flax NNX model's variables as a flat
``{"layers/0/kernel": array}`` dict in an ``.npz`` (written atomically), and back."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import BmissFileError

__all__ = ["flat_state", "load_flat_state", "atomic_savez", "weight_files", "load_npz_into"]


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of ``model`` as {"layers/0/kernel": array, ...}."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    return {_key(path): np.asarray(v) for path, v in leaves}


def load_flat_state(model: nnx.Module, arrays) -> None:
    """Overwrite ``model``'s variables from a flat dict (shapes must match)."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    leaves, tree = jax.tree_util.tree_flatten_with_path(pure)
    new = []
    for path, v in leaves:
        k = _key(path)
        if k not in arrays:
            raise BmissFileError(f"weights lack variable {k!r}: they belong to another network")
        arr = np.asarray(arrays[k])
        if arr.shape != v.shape:
            raise BmissFileError(f"variable {k!r} has shape {arr.shape}, the model expects {v.shape}")
        new.append(jnp.asarray(arr, v.dtype))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(tree, new))
    nnx.update(model, state)


def _key(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def atomic_savez(path, arrays: dict) -> None:
    """``np.savez`` via :func:`bmiss.files.atomic_write`: never half a file."""
    from .files import atomic_write

    def w(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, w)


def weight_files(path) -> tuple:
    """``(npz, json)`` paths of a network's weights and metadata from either name (or the stem);
    a missing one is a clear error."""
    from pathlib import Path

    npz = Path(path)
    npz = npz.with_suffix(".npz") if npz.suffix in (".json", "") else npz
    js = npz.with_suffix(".json")
    for f in (npz, js):
        if not f.exists():
            raise FileNotFoundError(f"weights file {f} does not exist (need both .npz weights and .json metadata)")
    return npz, js


def load_npz_into(model, npz) -> None:
    """Overwrite ``model``'s variables from the ``.npz`` written by :func:`atomic_savez`."""
    with np.load(npz, allow_pickle=False) as z:
        load_flat_state(model, {k: z[k] for k in z.files})
