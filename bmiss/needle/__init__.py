"""Needle EMG: WFDB reader, motor-unit potential (MUAP) analysis and neuromuscular-disease classification.

Modules
-------
wfdb      single-channel WFDB records (``.hea`` + signal) as :class:`bmiss.io.Recording`
detect    MUAP detection, template clustering and single-channel matching-pursuit decomposition
features  clinical MUAP features (duration, amplitude, area, phases, turns, size index, rates)
classify  interpretable (logistic) model, Flax NNX 1-D CNN, their combination; leave-one-subject-out
cli       ``bmiss qemg`` and ``bmiss classify``

Submodules are imported on use (``from bmiss.needle import features``) so that importing the
package stays light.
"""
