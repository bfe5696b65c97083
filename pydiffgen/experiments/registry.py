"""Every preset-based experiment, one line each. Each module declares its
:class:`~pydiffgen.experiments._runs.Experiment` record; ``pydiffgen`` builds a subcommand
per record (the config's fields as flags, plus ``--preset``, ``--out``, ``--dry-run``,
``--report-only`` and ``--resume``)."""

from __future__ import annotations

from . import closed_form, gaussian_structure, generalization, memorization_factors, optimal_basis
from ._runs import Experiment

__all__ = ["EXPERIMENTS", "experiment"]

EXPERIMENTS: tuple[Experiment, ...] = (
    generalization.EXPERIMENT,
    gaussian_structure.EXPERIMENT,
    memorization_factors.EXPERIMENT,
    optimal_basis.EXPERIMENT,
    closed_form.EXPERIMENT,
)


def experiment(name: str) -> Experiment:
    """The record named ``name`` (e.g. "sweep", "memorization factors")."""
    return next(e for e in EXPERIMENTS if e.name == name)
