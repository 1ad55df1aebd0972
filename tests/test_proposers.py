"""One contract, every proposer (Diffrax-style: each implementation through the same checks).

The interface (:mod:`bmiss.pipeline.proposers.base`): ``init`` returns an immutable
:class:`ProposerState`; ``propose``/``update`` return a NEW state and never change the one they
were given; proposals are unit-norm float32 filters of the extended space; ``deflation`` is None
or [K, n_ext]; ``extras`` and ``settings_meta`` are JSON-able; run to exhaustion inside the
search stage, every proposer stops.
"""
from __future__ import annotations

import copy
import dataclasses
import json

import jax
import numpy as np
import pytest

from bmiss import anatomy
from bmiss.files import jsonable
from bmiss.pipeline.proposers import FastICA, ModelProposer, Oracle
from bmiss.pipeline.proposers.base import Done, Proposal, ProposerState
from bmiss.pipeline.search import SearchLog, search, workspace
from bmiss.pipeline.prepare import prepare
from bmiss.pipeline.settings import METHOD_RULES, FastICASettings, ModelSettings, OracleSettings

from synth import FS, synth

R = 8


@pytest.fixture(scope="module")
def data():
    emg, muaps, spikes = synth(n_ch=16, n_mu=4, dur=4.0, seed=2)
    return emg, muaps, prepare(emg, FS, R=R)


def _model():
    a = anatomy.load("tibialis_anterior").with_grid(rows=4, cols=4, ied_mm=8.0, fs_hz=FS)
    s = ModelSettings(n_probe=32, n_starts=2, n_steps=3, n_rounds=1, probe_shifts=(0.0,))
    return ModelProposer(settings=s, anatomy=a), METHOD_RULES["bmiss"]


def _fastica():
    return FastICA(settings=FastICASettings(n_iter=6, batch=4)), METHOD_RULES["cbss"]


def _oracle(muaps):
    return Oracle(settings=OracleSettings(n_lags=4), true_muaps=muaps), METHOD_RULES["oracle"]


PROPOSERS = {"cbss": lambda m: _fastica(), "oracle": _oracle, "bmiss": lambda m: _model()}


def _snapshot(obj):
    """A deep copy of every field (arrays by value, nested dataclasses field by field) to check that
    hooks never change their input."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _snapshot(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    leaves = jax.tree_util.tree_leaves(obj)
    if not isinstance(obj, (dict, list, tuple)) and (len(leaves) != 1 or leaves[0] is not obj):
        return ("pytree leaves", [_snapshot(v) for v in leaves])  # e.g. a network's weights (nnx.State)
    if hasattr(obj, "shape") and not isinstance(obj, np.generic):
        return np.array(obj)
    return copy.deepcopy(obj) if not callable(obj) and not hasattr(obj, "muap") else obj


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_proposer_contract(name, data):
    emg, muaps, prep = data
    prop, rules = PROPOSERS[name](muaps)
    ws = workspace(prep, rules)
    st0 = prop.init(ws)
    assert isinstance(st0, ProposerState) and dataclasses.is_dataclass(st0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(st0, dataclasses.fields(st0)[0].name, None)
    before = _snapshot(st0)
    st1, props = prop.propose(st0, ws, 3, True)
    assert _same(before, _snapshot(st0)), "propose changed the state it was given"
    assert isinstance(st1, ProposerState) and 1 <= len(props) <= 3
    for p in props:
        assert isinstance(p, Proposal) and p.w.dtype == np.float32 and p.w.shape == (ws.n,)
        assert abs(float(np.linalg.norm(p.w)) - 1.0) < 1e-3 and isinstance(p.info, dict)
    snap1 = _snapshot(st1)
    done = [Done(cand=i, verdict="low_sil", info=p.info, fp_w=p.w, w=p.w) for i, p in enumerate(props)]
    st2 = prop.update(st1, ws, done)
    assert isinstance(st2, ProposerState)
    assert _same(snap1, _snapshot(st1)), "update changed the state it was given"
    Q = prop.deflation(st2)
    assert Q is None or (np.asarray(Q).ndim == 2 and np.asarray(Q).shape[1] == ws.n)
    json.dumps(jsonable(prop.settings_meta()))


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_proposer_runs_to_exhaustion_in_the_search(name, data):
    emg, muaps, prep = data
    prop, rules = PROPOSERS[name](muaps)
    ws = workspace(prep, rules)
    log = SearchLog()
    units, state = search(ws, prop, rules, [], batch=4, log=log, desc=name, progress=False)
    assert isinstance(state, ProposerState) and len(log.candidates) >= 1
    extra, meta = prop.extras(state, units)
    assert isinstance(extra, dict) and isinstance(meta, dict)
    json.dumps(jsonable(meta))
    if name == "oracle":
        assert len(log.candidates) == len(muaps)  # one candidate per true MU, then exhausted
    if name == "cbss":
        assert len(log.candidates) == 6  # n_iter
