"""Train PPOKL on CartPole-v1 with RL Zoo's tuned PPO settings, save, load and evaluate."""

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import PPOKL

th.set_num_threads(1)  # small MLPs train fastest on one thread (see README, "Speed")

env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
model = PPOKL(
    "MlpPolicy",
    env,
    n_steps=32,
    batch_size=256,
    gae_lambda=0.8,
    gamma=0.98,
    n_epochs=20,
    learning_rate=LinearSchedule(1e-3, 0.0, 1.0),
    kl_target=0.01,  # the paper's default; beta starts at kl_coef=1.0 and adapts
    verbose=1,
    seed=0,
)
model.learn(100_000, progress_bar=True)
model.save("ppokl_cartpole")

model = PPOKL.load("ppokl_cartpole", env=env)  # beta comes back too
print("beta after training:", model.kl_coef)
mean_reward, std_reward = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=1), n_eval_episodes=20)
print(f"mean reward {mean_reward:.1f} +/- {std_reward:.1f}")
