from sb3_ppo_kl.ppo_kl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_ppo_kl.ppo_kl.ppo_kl import PPOKL

__all__ = ["PPOKL", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
