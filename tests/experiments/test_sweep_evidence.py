"""The sweep's evidence: the lead of the paired median over both controls, with its
half-sampling interval, and the headline that calls weak evidence weak."""

import numpy as np

from pydiffgen.experiments.generalization import lead_over_controls, summary_table
from pydiffgen.report.sweep import headline


def _cosines(center, m, seed):
    return np.clip(center + 0.02 * np.random.default_rng(seed).standard_normal(m), -1, 1)


def test_clear_lead_excludes_zero():
    paired = _cosines(0.95, 128, 0)
    nearest = np.concatenate([_cosines(0.80, 128, 1), _cosines(0.81, 128, 2)])
    baseline = _cosines(0.70, 500, 3)
    lead = lead_over_controls(paired, nearest, baseline)
    assert abs(lead["lead"] - (np.median(paired) - np.median(nearest))) < 1e-12
    assert 0 < lead["low"] <= lead["lead"] <= lead["high"] and lead["ci"] == 0.95
    assert lead["paired_above_nearest"] == 1.0
    assert lead_over_controls(paired, nearest, baseline) == lead  # seeded: reproducible


def test_lead_against_the_baseline_and_share_per_sample():
    paired = np.array([0.9, 0.9, 0.5, 0.5])
    nearest = np.array([0.8, 0.95, 0.4, 0.6, 0.1, 0.1, 0.1, 0.1])  # A's four, then B's
    lead = lead_over_controls(paired, nearest, np.full(10, 0.85))
    assert abs(lead["lead"] - (0.7 - 0.85)) < 1e-12  # the baseline is the closer control
    assert lead["paired_above_nearest"] == 6 / 8


def test_overlapping_controls_are_weak_evidence():
    paired = _cosines(0.93, 64, 0)
    nearest = np.concatenate([_cosines(0.90, 64, 1), _cosines(0.90, 64, 2)])
    baseline = _cosines(0.905, 640, 3)
    lead = lead_over_controls(paired, nearest, baseline)
    summary = {"verdict": "generalizing", "paired_median": float(np.median(paired)),
               "nearest_median": float(np.median(nearest)),
               "baseline_median": float(np.median(baseline)), "memorized_fraction": 0.0}
    # a lead of 0.02 or more whose interval still reaches zero is weak, too
    wide = {**lead, "lead": 0.03, "low": -0.001, "high": 0.06}
    top = {**summary, "paired_median": summary["baseline_median"] + 0.03, "lead": wide}
    mem = {"verdict": "memorizing", "paired_median": 0.3, "nearest_median": 0.99,
           "baseline_median": 0.5, "memorized_fraction": 1.0}
    text = headline({2: mem, 640: top})
    assert text.startswith("Weak evidence") and "95% CI" in text and "-0.001" in text
    clear = {**top, "lead": {**wide, "low": 0.01}}
    text = headline({2: mem, 640: clear})
    assert text.startswith("The models memorize up to N = 2 and generalize from N = 640")
    assert "95% CI +0.010 to +0.060" in text and "% of the samples" in text


def test_summary_table_shows_the_lead():
    lead = {"lead": 0.05, "low": 0.02, "high": 0.08, "ci": 0.95, "paired_above_nearest": 0.9}
    s = {"verdict": "generalizing", "paired_median": 0.96, "nearest_median": 0.9,
         "baseline_median": 0.91, "memorized_fraction": 0.0, "lead": lead}
    lines = summary_table({"sizes": {"640": s}})
    assert "lead [95% CI]" in lines[1] and "+0.050 [+0.020, +0.080]" in lines[3]
    assert "90%" in lines[3]
