"""Experiments: frozen-dataclass configs with named presets, run in a resumable
:class:`RunDir` and registered for the command line as :class:`Experiment` records
(:mod:`pydiffgen.experiments.registry`). The sweep's names are re-exported here."""

from ._runs import Experiment, RunDir, hold_folder, writable_folder
from .generalization import PRESETS, SweepConfig, generalization_sweep, plan, preset, write_report

__all__ = ["PRESETS", "Experiment", "RunDir", "SweepConfig", "generalization_sweep",
           "hold_folder", "plan", "preset", "writable_folder", "write_report"]
