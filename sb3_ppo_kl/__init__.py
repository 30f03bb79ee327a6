"""sb3_ppo_kl: PPO with the adaptive KL penalty ("PPO1", Schulman et al. 2017) for Stable-Baselines3."""

from sb3_ppo_kl.common.bc import behaviour_clone
from sb3_ppo_kl.common.finite import NonFiniteError
from sb3_ppo_kl.common.kl import (
    KLCoefController,
    distribution_params,
    has_analytic_kl,
    per_state_kl,
    sampled_kl,
)
from sb3_ppo_kl.common.safe_load import SafeLoadError, SafeLoadLimits
from sb3_ppo_kl.ppo_kl import PPOKL
from sb3_ppo_kl.ppo_kl_mask import MaskablePPOKL
from sb3_ppo_kl.ppo_kl_recurrent import RecurrentPPOKL

__version__ = "0.3.0"

__all__ = [
    "PPOKL",
    "KLCoefController",
    "MaskablePPOKL",
    "NonFiniteError",
    "RecurrentPPOKL",
    "SafeLoadError",
    "SafeLoadLimits",
    "__version__",
    "behaviour_clone",
    "distribution_params",
    "has_analytic_kl",
    "per_state_kl",
    "sampled_kl",
]
