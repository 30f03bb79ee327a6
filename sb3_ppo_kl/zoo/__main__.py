"""
``python -m sb3_ppo_kl.zoo train|enjoy [rl_zoo3 arguments]`` (also installed as ``sb3-ppo-kl-zoo``).

Registers our algorithms in RL Zoo, then hands over to ``rl_zoo3.train`` / ``rl_zoo3.enjoy`` with
exactly their arguments, with two defaults of ours:

- for ``train`` with one of our algorithms and no ``-conf``, our shipped hyperparameter file is used;
- without ``--num-threads``, torch uses one thread (RL Zoo's default, ``-1``, leaves torch's own, one per core).
  Small MLPs train fastest on one thread: on a loaded 2-core machine, 20,000 CartPole steps took seconds with one
  and minutes with torch's default (docs/guide/rl_zoo.md). ``--num-threads -1`` gives torch's default back.

Without the ``[zoo]`` extra (rl_zoo3, optuna) it says how to install it, in one line, and exits with status 1.
"""

import importlib.util
import sys

USAGE = "usage: python -m sb3_ppo_kl.zoo {train,enjoy} [rl_zoo3 arguments, see --help]"
# What `pip install "sb3-ppo-kl[zoo]"` brings that this module imports
ZOO_MODULES = ("rl_zoo3", "optuna")


def _algo(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--algo" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return "ppo"  # rl_zoo3's default


def _has_option(args: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(f"{option}=") for arg in args)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    missing = [module for module in ZOO_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        raise SystemExit(
            f'sb3-ppo-kl-zoo: RL Zoo is not installed ({", ".join(missing)} missing): pip install "sb3-ppo-kl[zoo]"'
        )
    if not argv or argv[0] not in ("train", "enjoy"):
        raise SystemExit(USAGE)
    from sb3_ppo_kl.zoo import ALGOS, default_config, register

    script, args = argv[0], argv[1:]
    register()
    if not _has_option(args, "--num-threads"):
        args += ["--num-threads", "1"]
    if script == "train" and _algo(args) in ALGOS and not (_has_option(args, "-conf") or _has_option(args, "--conf-file")):
        args += ["--conf-file", default_config(_algo(args))]
    sys.argv = [f"sb3_ppo_kl.zoo {script}", *args]
    if script == "train":
        from rl_zoo3.train import train

        train()
    else:
        from rl_zoo3.enjoy import enjoy

        enjoy()


if __name__ == "__main__":
    main()
