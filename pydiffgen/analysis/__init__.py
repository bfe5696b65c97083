"""pydiffgen.analysis"""

from .basis import (  # noqa: F401 - public API
    TangentProjection,
    disk_tangent_space,
    gaussian_alignment,
    manifold_alignment,
    optimal_slope,
    principal_angles,
    psnr_slope,
    spectral_gaps,
)
from .detect import (  # noqa: F401 - public API
    CopyDetection,
    WenScores,
    copy_detection,
    detector_auc,
    wen_score,
)
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
from .gap import (  # noqa: F401 - public API
    GapResult,
    default_sigmas,
    noise_level_gap,
    noise_level_gap_over_training,
)
from .gaussian import GaussianDenoiser, gaussian_moments  # noqa: F401 - public API
from .information import (  # noqa: F401 - public API
    IdentificationResult,
    identification_bound,
    identification_bound_from_denoisers,
    optimum_copy_fraction,
)
from .jacobian import effective_dimension, jacobian, sure_mse  # noqa: F401 - public API
from .linear import (  # noqa: F401 - public API
    LinearDenoiser,
    compare_weights,
    linear_distill,
    subspace_cosines,
)
from .local import (  # noqa: F401 - public API
    PATCH_MODELS,
    LocalEmpiricalDenoiser,
    PatchCalibration,
    PatchPosteriorDenoiser,
    calibrate_patch_size,
    image_patches,
    r_squared,
)
from .spectrum import JacobianSpectrum, jacobian_spectrum  # noqa: F401 - public API
from .trajectory import TrajectoryProbe, trajectory_probe  # noqa: F401 - public API
