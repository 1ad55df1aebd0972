"""The fast cases of the hostile-input trial (experiments/hostile_inputs.py, issue 17) that this tree
owns: each must give its documented behaviour (one line and exit 2, a BmissError naming the argument,
or the documented result) and change no file. Cases owned by the settings parser and the file
readers run in the script; the slow ones (interrupts, simulation) have their own tests
(tests/test_interrupts.py, tests/test_reliability.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import hostile_inputs as H  # noqa: E402

FAST = [c for c in H.cases() if c.fast and c.owner == H.OWN]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    H.make_inputs(d)
    return d


def test_the_trial_has_every_case_of_the_issue_that_is_ours():
    ids = {c.id for c in H.cases()}
    for must in ("api-export-dec-onto-itself", "api-export-onto-recording", "api-save-decomposition-default",
                 "simulate-out-no-suffix", "simulate-out-txt", "decompose-out-folder", "export-units-json",
                 "duration-0.001", "snr-minus-1e1", "anatomy-empty", "ied-0.1", "unknown-argument", "n-iter-oracle",
                 "api-decompose-none", "api-evaluate-swapped", "api-seed-minus-1", "api-max-units-0",
                 "simulate-named-grid-geometry", "interrupt-SIGINT-0s", "interrupt-SIGTERM-0s"):
        assert must in ids, must
    assert len(FAST) >= 20


@pytest.mark.parametrize("case", FAST, ids=[c.id for c in FAST])
def test_hostile_case(case, work):
    ok, detail = case.run(work)
    assert ok, f"{case.what}: {detail}"
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("rec.npz", "dec.npz", "existing.npz"))
    assert not leftovers, leftovers
