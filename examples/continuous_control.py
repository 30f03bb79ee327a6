"""
PPOKL on continuous control: Pendulum-v1 with gSDE (RL Zoo's PPO settings), or a MuJoCo task.

    python examples/continuous_control.py                    # Pendulum-v1, about 1 minute
    python examples/continuous_control.py HalfCheetah-v5     # needs the [mujoco] extra; the paper's settings
"""

import sys

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_ppo_kl import PPOKL

th.set_num_threads(1)  # small MLPs train fastest on one thread (see README, "Speed")

env_id = sys.argv[1] if len(sys.argv) > 1 else "Pendulum-v1"
if env_id == "Pendulum-v1":
    env = make_vec_env(env_id, n_envs=4, seed=0)
    model = PPOKL(
        "MlpPolicy", env, n_steps=1024, gamma=0.9, learning_rate=1e-3, use_sde=True, sde_sample_freq=4, verbose=1, seed=0
    )
    timesteps = 100_000
else:
    # The paper's MuJoCo protocol (Schulman et al. 2017, table 3): these are PPOKL's defaults,
    # with a 2x64 tanh MLP and separate policy and value networks.
    env = make_vec_env(env_id, n_envs=1, seed=0)
    model = PPOKL("MlpPolicy", env, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])), verbose=1, seed=0)
    timesteps = 1_000_000

model.learn(timesteps, progress_bar=True)
model.save(f"ppokl_{env_id}")
mean_reward, std_reward = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=1), n_eval_episodes=10)
print(f"{env_id}: mean reward {mean_reward:.1f} +/- {std_reward:.1f}, beta {model.kl_coef:.3g}")
