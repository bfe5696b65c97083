"""The sweep report renders: every figure is a real PNG with something drawn in it."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from pydiffgen.experiments import SweepConfig, generalization_sweep
from pydiffgen.report.sweep import headline

# tests/experiments/test_sweep.py's tiny sweep: two sizes, seconds to run
TINY = SweepConfig(
    name="tiny", dataset="digits", sizes=(2, 5), model="bf_unet",
    model_options=(("levels", 1), ("width", 8)), steps=12, batch_size=16, n_samples=6,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="euler",
    sampler_options=(("steps", 4),),
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    generalization_sweep(TINY, out, progress=False, log=lambda m: None)
    return (out / "report.html").read_text(encoding="utf-8")


def _images(html: str) -> list[np.ndarray]:
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert sources and len(sources) == html.count("<img")
    images = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        img = Image.open(io.BytesIO(png))
        img.load()
        images.append(np.asarray(img.convert("L"), dtype=np.float64))
    return images


def test_every_figure_is_a_png_with_content(report):
    images = _images(report)
    assert len(images) >= 6
    for img in images:
        assert min(img.shape) >= 50  # not a sliver
        assert img.std() > 5  # not blank: something is drawn
        assert (img < 128).mean() > 0.002  # dark marks (lines, text, images), not a tint


def test_report_reads_well(report):
    assert 'class="headline"' in report
    assert "to the right of" in report and "red above dark" not in report
    assert "gen. score" in report.lower() and "‖x − NN(x)‖ / ‖x‖" in report
    assert "pydiffgen" in report and "threads" in report  # the run's metadata
    assert "%" in report.split("<table>")[1].split("</table>")[0]  # memorized in percent


def test_headline_says_when_evidence_is_weak():
    def s(verdict, p, near, base):
        return {"verdict": verdict, "paired_median": p, "nearest_median": near,
                "baseline_median": base}

    weak = headline({2: s("memorizing", 0.3, 0.99, 0.9), 640: s("generalizing", 0.926, 0.902,
                                                                  0.923)})
    assert weak.startswith("Weak evidence") and "N = 640" in weak and "N = 2" in weak
    clear = headline({2: s("memorizing", 0.3, 0.99, 0.5), 640: s("generalizing", 0.95, 0.8,
                                                                   0.7)})
    assert clear.startswith("The models memorize up to N = 2 and generalize from N = 640")
