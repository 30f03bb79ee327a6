"""Policy aliases of :class:`~sb3_ppo_kl.RecurrentPPOKL`: sb3-contrib's LSTM actor-critic policies, unchanged."""

from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy

__all__ = ["CnnLstmPolicy", "MlpLstmPolicy", "MultiInputLstmPolicy"]
