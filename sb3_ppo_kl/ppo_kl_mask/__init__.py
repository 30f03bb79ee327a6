from sb3_ppo_kl.ppo_kl_mask.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_ppo_kl.ppo_kl_mask.ppo_kl_mask import MaskablePPOKL

__all__ = ["CnnPolicy", "MaskablePPOKL", "MlpPolicy", "MultiInputPolicy"]
