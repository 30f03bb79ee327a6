"""
PPOKL with SB3 callbacks and VecNormalize, unchanged from SB3 PPO usage:
evaluate periodically, keep the best model, checkpoint (beta is saved with each checkpoint),
and stop once the evaluation reward passes a threshold.
"""

import torch as th
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_kl import PPOKL

th.set_num_threads(1)  # small MLPs train fastest on one thread (see README, "Speed")

env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=4, seed=0), gamma=0.9)
# The evaluation env shares the training statistics (EvalCallback syncs them) but does not update them
eval_env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=1), training=False, norm_reward=False, gamma=0.9)

callbacks = CallbackList(
    [
        EvalCallback(
            eval_env,
            eval_freq=5_000 // 4,
            n_eval_episodes=10,
            best_model_save_path="logs/pendulum/",
            callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=-200, verbose=1),
            verbose=1,
        ),
        CheckpointCallback(save_freq=20_000 // 4, save_path="logs/pendulum/checkpoints/", save_vecnormalize=True),
    ]
)
model = PPOKL("MlpPolicy", env, n_steps=1024, gamma=0.9, learning_rate=1e-3, use_sde=True, sde_sample_freq=4, seed=0)
model.learn(200_000, callback=callbacks, progress_bar=True)
print(f"stopped after {model.num_timesteps} steps, beta {model.kl_coef:.3g}")

model.save("logs/pendulum/final_model")
env.save("logs/pendulum/vecnormalize.pkl")  # load with VecNormalize.load(path, venv) before PPOKL.load
