"""Measure real (CPU, CUDA) and fake training steps by memory category and phase."""
from memplan.measure.step import StepMeasurement, default_loss, measure_step
from memplan.measure.tracker import (CATEGORIES, PHASES, MemoryTracker, optimizer_state_tensors,
                                     state_bytes, tensor_bytes)

__all__ = ["CATEGORIES", "PHASES", "MemoryTracker", "StepMeasurement", "measure_step",
           "default_loss", "optimizer_state_tensors", "state_bytes", "tensor_bytes"]
