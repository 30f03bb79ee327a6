"""
``python -m sb3_ppo_kl.zoo train|enjoy [rl_zoo3 arguments]`` (also installed as ``sb3-ppo-kl-zoo``).

Registers our algorithms in RL Zoo, then hands over to ``rl_zoo3.train`` / ``rl_zoo3.enjoy`` with
exactly their arguments. For ``train`` with one of our algorithms and no ``-conf``, our shipped
hyperparameter file is used.
"""

import sys

from sb3_ppo_kl.zoo import ALGOS, default_config, register

USAGE = "usage: python -m sb3_ppo_kl.zoo {train,enjoy} [rl_zoo3 arguments, see --help]"


def _algo(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--algo" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return "ppo"  # rl_zoo3's default


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "enjoy"):
        raise SystemExit(USAGE)
    script, args = argv[0], argv[1:]
    register()
    if script == "train" and _algo(args) in ALGOS and not {"-conf", "--conf-file"} & {a.split("=", 1)[0] for a in args}:
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
