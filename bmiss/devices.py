"""Device placement: the one place that decides how bmiss spreads one recording over devices.

When JAX sees several devices (GPUs, TPU cores, or CPU host devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), the stages that work on many
independent rows spread those rows over a 1-D :class:`jax.sharding.Mesh` of every device:

- the search's candidate pool (:func:`bmiss.pipeline.search.search`): the ``B`` slots of the
  pool state are split across devices, the whitened data ``zt`` is replicated;
- the per-unit fits (:func:`bmiss.fitting.fit_units`): the unit axis of the observations,
  weights and starting parameters is split across devices.

Inside the jitted code nothing changes: XLA's SPMD partitioner (GSPMD) follows the input
shardings. The pool is split over its slots, not over the samples of ``zt``: both compile and
give the units of one device inside ``run_pool``'s ``lax.while_loop``, but the slot split was
faster (1.4-1.6 s against 2.1 s of pool time for a 4-s recording on 2 forced CPU host devices;
the sample split gathers ``zt`` for its block reads) and its rows never mix, so the search's
results are bit for bit those of one device (measured).

With one device (the default CPU install) every helper returns its input unchanged, so the
default path costs one cached check per call (0.7 µs per search device call, against seconds of
pool work: ``experiments/bench_devices.py``). ``BMISS_SHARD=0`` in the environment turns
sharding off (the arrays stay on the default device).

Examples
--------
>>> import numpy as np
>>> from bmiss import devices
>>> devices.n_devices() >= 1
True
>>> x = devices.shard_leading(np.zeros((8, 3), np.float32))
>>> devices.n_shards(x) in (1, devices.n_devices())
True
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["AXIS", "ENV", "enabled", "n_devices", "mesh", "shard_leading", "replicate", "n_shards", "meta"]

AXIS = "devices"  #: name of the mesh's single axis
ENV = "BMISS_SHARD"  #: environment variable; "0" / "false" / "no" / "off" turns sharding off


def enabled() -> bool:
    """Whether sharding is allowed (``BMISS_SHARD`` is not ``0``/``false``/``no``/``off``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=None)
def _all_devices() -> tuple:
    return tuple(jax.devices())


def n_devices() -> int:
    """Number of devices JAX sees on its default backend (cached for the process)."""
    return len(_all_devices())


@lru_cache(maxsize=None)
def _mesh() -> Mesh:
    return Mesh(np.asarray(_all_devices(), dtype=object), (AXIS,))


def mesh() -> Mesh | None:
    """The 1-D mesh over every device (axis :data:`AXIS`), or ``None`` when there is one device
    or sharding is turned off (:data:`ENV`). Cached: one mesh per process."""
    if len(_all_devices()) < 2 or not enabled():
        return None
    return _mesh()


def _place(tree: Any, m: Mesh, leading: bool) -> Any:
    n = m.size
    rep = NamedSharding(m, P())
    split = NamedSharding(m, P(AXIS))

    def one(x):
        if not isinstance(x, (np.ndarray, jax.Array)):
            return x  # Python scalars and other leaves stay as they are (e.g. static fields of a model)
        shape = np.shape(x)
        s = split if leading and len(shape) >= 1 and shape[0] % n == 0 else rep
        return jax.device_put(x, s)

    return jax.tree.map(one, tree)


def shard_leading(tree: Any) -> Any:
    """Place every array of ``tree`` with its leading axis split across the devices.

    Parameters
    ----------
    tree : array or pytree of arrays (numpy or JAX), leading axis = the independent rows
        (candidate slots, units).

    Returns
    -------
    The same pytree. With one device or sharding off: the input itself, untouched (no copy,
    no transfer). Otherwise JAX arrays with ``NamedSharding(mesh, P(AXIS))`` when the leading
    axis divides evenly by the number of devices. An array whose leading axis does not divide
    (and a scalar) is **replicated**, not padded: padding would change the shapes the caller
    sees and the meaning of the extra rows (an extra pool slot would be a candidate), and a
    replicated array gives exactly the single-device result. Callers keep their row counts a
    multiple of small powers of two (pool ``batch`` 16, units padded to ``pad_to`` 8), so
    replication is the exception.

    Examples
    --------
    >>> st = devices.shard_leading({"W": np.zeros((16, 4), np.float32)})  # doctest: +SKIP
    >>> st["W"].sharding  # NamedSharding(mesh=..., spec=PartitionSpec('devices',)) on 2 devices  # doctest: +SKIP
    """
    m = mesh()
    return tree if m is None else _place(tree, m, True)


def replicate(tree: Any) -> Any:
    """Place every array of ``tree`` on every device (``NamedSharding(mesh, P())``); with one
    device or sharding off, the input itself.

    Examples
    --------
    >>> zt = devices.replicate(jnp.zeros((100, 8)))  # doctest: +SKIP
    """
    m = mesh()
    return tree if m is None else _place(tree, m, False)


def n_shards(x: Any) -> int:
    """Number of devices holding distinct parts of ``x`` (1 for a numpy array, a single-device
    or a replicated array).

    Examples
    --------
    >>> devices.n_shards(np.zeros(4))
    1
    """
    s = getattr(x, "sharding", None)
    if s is None or s.is_fully_replicated:
        return 1
    return len(s.device_set)


def meta(sharded: dict[str, int] | None = None) -> dict:
    """What a result records about the devices: ``{"n": devices seen, "platform", "kinds":
    [device kinds], "enabled": sharding allowed, "sharded": {stage: devices its rows were
    split over}}``.

    Examples
    --------
    >>> devices.meta({"search": 1})["n"] >= 1
    True
    """
    devs = _all_devices()
    return {"n": len(devs), "platform": devs[0].platform, "kinds": sorted({d.device_kind for d in devs}),
            "enabled": enabled(), "sharded": dict(sharded or {})}
