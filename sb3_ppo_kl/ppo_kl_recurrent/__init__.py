from sb3_ppo_kl.ppo_kl_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from sb3_ppo_kl.ppo_kl_recurrent.ppo_kl_recurrent import RecurrentPPOKL

__all__ = ["CnnLstmPolicy", "MlpLstmPolicy", "MultiInputLstmPolicy", "RecurrentPPOKL"]
