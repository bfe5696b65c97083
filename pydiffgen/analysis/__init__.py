"""pydiffgen.analysis"""

from .empirical import (  # noqa: F401 - public API
    BlurredEmpiricalDenoiser,
    EmpiricalDenoiser,
    SmoothedEmpiricalDenoiser,
)
