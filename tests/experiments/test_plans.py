"""Every experiment that trains estimates its training time in its --dry-run plan, from a
few real steps measured here."""

import re

import pytest

from pydiffgen.experiments.registry import experiment


@pytest.mark.parametrize("name, preset", [("optimal-basis", "quick"), ("gaussian", "demo"),
                                          ("memorization factors", "demo")])
def test_plan_estimates_training_time(name, preset):
    exp = experiment(name)
    text = exp.plan(exp.preset(preset))
    line = next(s for s in text.splitlines() if "estimated training time" in s)
    rate = float(re.search(r"at (\d+) images/s", line).group(1))
    assert rate > 0
    images = int(re.search(r"\((\d+) (?:images|models)", line).group(1))
    assert images > 0
