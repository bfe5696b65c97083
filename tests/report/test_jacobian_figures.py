"""The Jacobian figures and the sweep's Jacobian section build on tiny inputs."""

import numpy as np

from pydiffgen.report import jacobian as rj
from pydiffgen.report.html import Report


def _spectrum(d, scale):
    return list(np.linspace(1.2, 0.01, d) * scale)


def test_figures_build(tmp_path):
    rep = Report("t", tmp_path)
    rep.figure(rj.spectra_vs_sigma({0.1: _spectrum(9, 1), 1.0: _spectrum(9, 0.5)}), "a")
    rep.figure(rj.spectra_vs_n({2: {"0.1": _spectrum(9, 1)}, 16: {"0.1": _spectrum(9, 0.3)}}), "b")
    vecs = np.random.default_rng(0).standard_normal((3, 1, 5, 5))
    rep.figure(rj.eigenvector_grid([("x", vecs, [1.0, 0.5, 0.1]), ("y", vecs[:2], None)]), "c")
    rep.figure(rj.effective_dimension({"m": ([0.1, 1.0], [30.0, 3.0], [1.0, 0.2])},
                                      reference={"manifold": 5}), "d")
    curve = {"input_psnr": [0.0, 10.0, 20.0], "output_psnr": [8.0, 14.0, 19.0]}
    rep.figure(rj.psnr_slopes([{"alpha": 1.0, "slope": 0.55, "intercept": 8.2,
                                "optimal_slope": 0.5, "fit_range": [0, 20], "curve": curve}]), "e")
    rep.figure(rj.tangent_angles([{"sigma": 0.1, "mean_angles_deg": [3.0, 20.0],
                                   "random_mean_angles_deg": [80.0, 88.0]},
                                  {"sigma": 0.4, "mean_angles_deg": [5.0, 30.0],
                                   "random_mean_angles_deg": [81.0, 89.0]}], "disks"), "f")
    path = rep.save()
    assert path.read_text().count("data:image/png;base64,") == 6
    for name in "abcdef":
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_sweep_section(tmp_path):
    rng = np.random.default_rng(1)

    def model(scale):
        return {"eigenvalues": {"0.1": _spectrum(16, scale), "1": _spectrum(16, scale / 4)},
                "trace": {"0.1": 9.0 * scale, "1": 2.0 * scale},
                "eigenvectors": {k: rng.standard_normal((3, 1, 4, 4)).tolist()
                                 for k in ("0.1", "1")}}

    per_n = {n: {"sigmas": [0.1, 1.0], "image": rng.standard_normal((1, 4, 4)).tolist(),
                 "A": model(1.0), "B": model(0.9), "agreement": {"0.1": 0.4, "1": 0.7}}
             for n in (2, 64)}
    rep = Report("sweep", tmp_path)
    rj.sweep_section(rep, per_n)
    html = rep.save().read_text()
    assert "Adaptive harmonic bases" in html and "A–B agreement" in html
    for name in ("jacobian_spectra_vs_n", "jacobian_effective_dimension", "jacobian_eigenvectors"):
        assert (tmp_path / f"{name}.png").exists()
