"""
Fine-tune a pretrained policy without forgetting it: start PPOKL from an SB3 PPO expert and keep it close to
the expert with a KL penalty to a copy of it (the reference policy), which follows the policy slowly
(``ref_tau=0.3``, from_pretrained's default).
"""

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_ppo_kl import PPOKL

th.set_num_threads(1)  # small MLPs train fastest on one thread

# 1. A small expert, trained with SB3's PPO and saved as usual
env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
expert = PPO("MlpPolicy", env, n_steps=128, batch_size=128, seed=0)
expert.learn(10_000)
expert.save("ppo_cartpole_expert")

# 2. Fine-tune it with PPOKL: the policy starts as a copy of the expert's (same architecture), and the loss gains
#    ref_kl_coef * KL[reference || policy] per state; after every update the reference moves 30% of the way to the
#    policy (ref_tau=0.3, the default here; ref_tau=0 keeps the expert itself as a frozen reference).
model = PPOKL.from_pretrained(
    "ppo_cartpole_expert",  # or expert.policy
    env,
    n_steps=128,
    batch_size=128,
    ref_kl_coef=1.0,  # a number, or a schedule of the progress remaining
    seed=0,
    verbose=1,  # train/ref_kl and train/ref_kl_coef are logged with the PPO1 terms
)
model.learn(10_000)
model.save("ppokl_cartpole_finetuned")  # the reference's weights are saved with the model

model = PPOKL.load("ppokl_cartpole_finetuned", env=env)  # ... and come back: training can continue
print("KL coefficient to the expert:", model.ref_kl_coef)
for name, agent in (("expert", expert), ("fine-tuned", model)):
    mean_reward, std_reward = evaluate_policy(agent, make_vec_env("CartPole-v1", n_envs=1, seed=1), n_eval_episodes=10)
    print(f"{name}: mean reward {mean_reward:.1f} +/- {std_reward:.1f}")
