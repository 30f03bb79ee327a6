"""
Train PPOKL on a Gymnasium environment, evaluate it, save it and print the mean reward.

    python -m sb3_ppo_kl --env CartPole-v1 --timesteps 100000
    python -m sb3_ppo_kl --env Pendulum-v1 --n-envs 4 --param n_steps=1024 --param use_sde=True
"""

import argparse
import ast

import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_ppo_kl import PPOKL


def _key_value(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_ppo_kl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium environment id (default: CartPole-v1)")
    parser.add_argument("--timesteps", type=int, default=100_000, help="training timesteps (default: 100000)")
    parser.add_argument("--n-envs", type=int, default=1, help="parallel environments (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--param", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="any PPOKL argument"
    )
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--save", default=None, help="where to save the model (default: ppokl_<env>.zip)")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, fastest for small MLPs)")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    # A bad --env or --param is the user's input, not a bug: one line and exit status 2, as argparse reports its own
    # errors. What fails later, in training, is not caught.
    try:
        env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    except gym.error.Error as error:
        parser.error(f"--env {args.env}: {error}")
    try:
        model = PPOKL("MlpPolicy", env, seed=args.seed, verbose=0, **dict(args.param))
    except (TypeError, ValueError) as error:
        parser.error(f"--param: {error}")
    model.learn(args.timesteps, progress_bar=not args.no_progress_bar)
    path = args.save or f"ppokl_{args.env}"
    model.save(path)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 10_000)
    mean_reward, std_reward = evaluate_policy(PPOKL.load(path), eval_env, n_eval_episodes=args.eval_episodes)
    assert isinstance(mean_reward, float)  # a float, not a list, without return_episode_rewards
    print(
        f"{args.env}: mean reward {mean_reward:.1f} +/- {std_reward:.1f} over {args.eval_episodes} episodes "
        f"(final beta {model.kl_coef:.4g}); saved to {path}.zip"
    )
    return mean_reward


if __name__ == "__main__":
    main()
