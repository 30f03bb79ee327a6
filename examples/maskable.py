"""MaskablePPOKL on sb3-contrib's invalid-action environment: masks during training and evaluation, save, load."""

from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy

from sb3_ppo_kl import MaskablePPOKL

# 70 actions, 55 of them invalid at each step (the env's action_masks() says which)
env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
eval_callback = MaskableEvalCallback(InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55), eval_freq=2048, warn=False)
model = MaskablePPOKL("MlpPolicy", env, gamma=0.4, seed=32, verbose=1)
model.learn(5000, callback=eval_callback)
model.save("maskable_ppokl")

model = MaskablePPOKL.load("maskable_ppokl", env=env)  # beta comes back too
print("beta after training:", model.kl_coef)
mean_reward, std_reward = evaluate_policy(model, env, n_eval_episodes=20, warn=False)
print(f"mean reward {mean_reward:.1f} +/- {std_reward:.1f} (max 100; a random policy scores about 6)")
