"""
Train PPOKL on a Gymnasium environment, evaluate it, save it and print the mean reward.

    sb3-ppo-kl --env CartPole-v1 --timesteps 100000
    python -m sb3_ppo_kl --env Pendulum-v1 --n-envs 4 --param n_steps=1024 --param use_sde=True
    python -m sb3_ppo_kl --env Pendulum-v1 --param learning_rate=lin_1e-3 --param "policy_kwargs=dict(net_arch=[64, 64])"

--param KEY=VALUE passes any PPOKL argument. VALUE is read as RL Zoo's -params values are written, without running
code: a Python literal (1e-3, True, None, [64, 64], {"pi": [64]}), dict(key=value, ...), nn.<name> for a torch.nn
class (activation_fn=nn.ReLU), or lin_<x> for a schedule that falls linearly from x to 0 over training (for
learning_rate, clip_range, clip_range_vf, kl_target and ref_kl_coef). A bare word (device=cpu) is a string.
"""

import argparse
import ast
import importlib
import math
import re
import sys
from typing import NoReturn

import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import PPOKL
from sb3_ppo_kl.zoo import SCHEDULED  # PPOKL's own scheduled arguments, as the zoo reads them

# PPOKL's arguments that take a schedule of the progress remaining: the only ones a `lin_<x>` value may set
SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf", *SCHEDULED)
_LIN = re.compile(r"lin_(.+)")
# How values that are meant as expressions start: one that cannot be read is an error, not a string
_EXPRESSIONS = ("dict(", "[", "{", "(", "nn.", "th.", "torch.")
# The modules a value may name a class from (`nn.ReLU`, `th.optim.RMSprop`), each with the base class it must have
_CLASS_MODULES = {
    "nn": (th.nn, th.nn.Module),
    "th.nn": (th.nn, th.nn.Module),
    "torch.nn": (th.nn, th.nn.Module),
    "th.optim": (th.optim, th.optim.Optimizer),
    "torch.optim": (th.optim, th.optim.Optimizer),
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported on one line (no usage above it, no line breaks), with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError(f"{ast.unparse(node)} is not a name")


def _value(node: ast.expr) -> object:
    """The value of an expression made only of literals, containers, dict(...) calls and torch.nn/optim classes."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(keyword.arg is None for keyword in node.keywords):
            raise ValueError("dict(**...) is not supported")
        return {keyword.arg: _value(keyword.value) for keyword in node.keywords}
    if isinstance(node, ast.List):
        return [_value(element) for element in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(element) for element in node.elts)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("{**...} is not supported")
        return {_value(key): _value(value) for key, value in zip(node.keys, node.values)}  # type: ignore[arg-type]
    if isinstance(node, ast.Attribute):
        module, _, name = _dotted(node).rpartition(".")
        if module in _CLASS_MODULES:
            namespace, base = _CLASS_MODULES[module]
            found = getattr(namespace, name, None)
            if isinstance(found, type) and issubclass(found, base):
                return found
        raise ValueError(f"{_dotted(node)} is not a torch.nn module class or a torch.optim optimizer")
    try:
        return ast.literal_eval(node)  # numbers (also negative), strings, True/False/None, sets
    except ValueError:
        raise ValueError(f"{ast.unparse(node)} is not a literal, dict(...), nn.<name> or lin_<x>") from None


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, the value VALUE stands for); see the module's docstring."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lin = _LIN.fullmatch(value)
    if lin:
        if key not in SCHEDULES:
            raise argparse.ArgumentTypeError(f"{text}: a lin_<x> schedule is for {', '.join(SCHEDULES)}, not {key}")
        try:
            start = float(lin.group(1))
        except ValueError:
            start = math.nan
        if not math.isfinite(start):
            raise argparse.ArgumentTypeError(f"{text}: lin_<x> needs a finite number x, got {lin.group(1)!r}")
        return key, LinearSchedule(start, 0.0, 1.0)
    try:
        return key, _value(ast.parse(value.strip(), mode="eval").body)
    except (SyntaxError, ValueError) as error:
        if value.strip().startswith(_EXPRESSIONS):  # meant as a value, but not one we read
            reason = str(error) if isinstance(error, ValueError) else "not valid Python syntax"
            raise argparse.ArgumentTypeError(f"{text}: {reason}") from None
    return key, value  # anything else, e.g. a bare word (cpu) or a path (runs/x): a string


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {value}")
    return value


def _progress_bar_missing() -> str | None:
    """The name of the package SB3's progress bar needs that is not installed, or None if both are."""
    for module in ("tqdm", "rich"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def main(argv: list[str] | None = None, prog: str = "python -m sb3_ppo_kl") -> float:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the mean evaluation reward."""
    parser = _ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium environment id (default: CartPole-v1)")
    parser.add_argument("--timesteps", type=_positive_int, default=100_000, help="training timesteps (default: 100000)")
    parser.add_argument("--n-envs", type=_positive_int, default=1, help="parallel environments (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--param",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any PPOKL argument; VALUE as described above (repeat for several)",
    )
    parser.add_argument("--eval-episodes", type=_positive_int, default=20, help="evaluation episodes (default: 20)")
    parser.add_argument("--save", default=None, help="where to save the model (default: ppokl_<env>.zip)")
    parser.add_argument(
        "--no-progress-bar", action="store_true", help="no progress bar (it needs tqdm and rich: the [extra] extra)"
    )
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: 1, fastest for small MLPs)")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    # A bad --env or --param is the user's input, not a bug: one line and exit status 2, as argparse reports its own
    # errors. What fails later, in training, is not caught.
    try:
        env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    except gym.error.Error as error:
        parser.error(f"--env {args.env}: {error}")
    try:
        # SB3 checks some arguments with assert (`batch_size` > 1, a rollout of more than one step)
        model = PPOKL("MlpPolicy", env, seed=args.seed, verbose=0, **dict(args.param))
    except (TypeError, ValueError, AssertionError) as error:
        env.close()
        parser.error(f"--param: {error or type(error).__name__}")
    progress_bar = not args.no_progress_bar
    missing = _progress_bar_missing() if progress_bar else None
    if missing:
        print(
            f"{prog}: no progress bar ({missing} is not installed): "
            'pip install "sb3-ppo-kl[extra]" for one, or pass --no-progress-bar',
            file=sys.stderr,
        )
        progress_bar = False
    model.learn(args.timesteps, progress_bar=progress_bar)
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


def cli() -> None:
    """The ``sb3-ppo-kl`` console script: :func:`main` on the command line, exit status 0 when it trained."""
    main(prog="sb3-ppo-kl")


if __name__ == "__main__":
    main()
