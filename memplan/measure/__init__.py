"""Measure real (CPU, CUDA) and fake training steps by memory category and phase.

    from memplan.measure import measure_step, validate, ValidateConfig
    m = measure_step(model, optimizer, batch)               # any nn.Module and optimizer
    v = validate(ValidateConfig(model="llama-60m", method="galore", device="fake"))
"""
from memplan.measure.step import StepMeasurement, default_loss, measure_step
from memplan.measure.tracker import (CATEGORIES, PHASES, MemoryTracker, optimizer_state_tensors,
                                     state_bytes, tensor_bytes)
from memplan.measure.validate import ValidateConfig, Validation, measure_config, validate

__all__ = ["CATEGORIES", "PHASES", "MemoryTracker", "StepMeasurement", "measure_step", "default_loss",
           "optimizer_state_tensors", "state_bytes", "tensor_bytes", "ValidateConfig", "Validation",
           "measure_config", "validate"]
