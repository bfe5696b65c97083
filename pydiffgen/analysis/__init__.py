"""pydiffgen.analysis"""

from .distances import (  # noqa: F401 - public API
    denoiser_distance,
    denoiser_outputs,
    linearity_score,
    output_distance,
)
from .empirical import (  # noqa: F401 - public API
    BlurredEmpiricalDenoiser,
    EmpiricalDenoiser,
    SmoothedEmpiricalDenoiser,
)
from .gaussian import GaussianDenoiser, eigh, gaussian_moments  # noqa: F401 - public API
from .linear import (  # noqa: F401 - public API
    LinearDenoiser,
    compare_weights,
    linear_distill,
    subspace_cosines,
)
