"""Experiments: sweeps with frozen-dataclass configs and named presets."""

from .generalization import PRESETS, SweepConfig, generalization_sweep, plan, preset, write_report

__all__ = ["PRESETS", "SweepConfig", "generalization_sweep", "plan", "preset", "write_report"]
