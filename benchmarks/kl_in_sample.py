"""
PPOKL's ``d`` against SB3's ``approx_kl`` and a fresh-sample estimate, update by update.

Compare PPOKL's ``train/kl`` (``d``, the analytic KL over the rollout) with SB3's ``train/approx_kl``
(the sampled estimate ``r - 1 - log r`` on the rollout's own actions) and with the same sampled
estimate on fresh actions drawn from the rollout policy.

The fresh-sample estimate is unbiased for ``d``; the rollout-action estimate is not, because the
update has just fitted the policy to those very actions (their mean ratio exceeds 1).

    python -m benchmarks.kl_in_sample --env Ant-v5 --updates 6
"""

import argparse

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_kl import PPOKL
from sb3_ppo_kl.common.kl import per_state_kl, sampled_kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Ant-v5")
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)
    model = PPOKL("MlpPolicy", VecNormalize(make_vec_env(args.env, n_envs=1, seed=args.seed)), seed=args.seed)
    n = model.n_steps * model.n_envs
    print("| update | d (train/kl) | sampled, fresh actions | sampled, rollout actions | mean ratio, rollout actions |")
    print("|---|---|---|---|---|")
    for update in range(1, args.updates + 1):
        model.learn(n, reset_num_timesteps=False)
        buffer = model.rollout_buffer
        obs = th.as_tensor(buffer.observations.reshape(n, -1))
        actions = th.as_tensor(buffer.actions.reshape(n, -1))
        old_log_prob = th.as_tensor(buffer.log_probs.reshape(n))
        action_dim = actions.shape[1]
        old = th.distributions.Normal(buffer.old_dist_params[:, :action_dim], buffer.old_dist_params[:, action_dim:])
        with th.no_grad():
            new = model.policy.get_distribution(obs)
            d = per_state_kl(buffer.old_dist_params, new).mean().item()
            rollout_log_prob = new.log_prob(actions)
            fresh = old.sample()
            fresh_kl = sampled_kl(old.log_prob(fresh).sum(-1), new.log_prob(fresh)).mean().item()
        rollout_kl = sampled_kl(old_log_prob, rollout_log_prob).mean().item()
        ratio = th.exp(rollout_log_prob - old_log_prob).mean().item()
        print(f"| {update} | {d:.4f} | {fresh_kl:.4f} | {rollout_kl:.4f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
