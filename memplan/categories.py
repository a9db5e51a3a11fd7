"""The memory categories and the phases of a training step: one set, shared by the estimate
(memplan/estimator.py), the measurement (memplan/measure/), the CLI's columns and the
dashboard's legend, so that an estimate and a measurement compare column by column.

Its own module, with nothing else in it: the dashboard's charts and the validation page name
the categories without importing the estimator.
"""
from __future__ import annotations

CATEGORIES = ("parameters", "gradients", "optimizer_states", "projectors", "activations", "temporaries", "overhead")
TENSOR_CATEGORIES = CATEGORIES[:-1]  # what tensors hold: the overhead (CUDA context, fragmentation) is outside them
PHASES = ("forward", "backward", "optimizer_step", "refresh_step")
