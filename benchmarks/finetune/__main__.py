"""The command line of ``python -m benchmarks.finetune``: run the benchmark (resumable), or print its summary."""

import argparse
import dataclasses
import sys

import benchmarks.finetune
from benchmarks.dispatch import exit_on_failure, parse_arguments
from benchmarks.finetune.compare import protocol_report
from benchmarks.finetune.pretrain import write_minari_dataset
from benchmarks.finetune.protocol import METHODS, PROTOCOLS, SEEDS, TASKS, MethodOptions
from benchmarks.finetune.report import report
from benchmarks.finetune.run import copy_models, run
from benchmarks.results import DEFAULT_ROOT, ResultsDir

DEFAULT_TASKS = ["LunarLander-v3", "LunarLanderContinuous-v3"]


def overrides(args: argparse.Namespace) -> dict[str, int]:
    """The task fields the command line sets."""
    keys = ("expert_timesteps", "timesteps", "eval_every", "eval_episodes", "bc_transitions", "bc_epochs")
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.finetune",
        description=benchmarks.finetune.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help=f"default: {DEFAULT_TASKS}, or the protocol's")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all, or the protocol's")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default: {SEEDS}, or the protocol's")
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        help="a preset: its seeds, methods, episodes per evaluation and results folder (benchmarks/results/<folder>); "
        "--seeds, --methods, --tasks and --results-dir may still choose a part of it",
    )
    parser.add_argument("--expert-timesteps", type=int, help="the expert's training budget (default: the task's)")
    parser.add_argument("--timesteps", type=int, help="fine-tuning budget per run (default: the task's)")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default: the task's, one rollout)")
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default 10)")
    parser.add_argument("--bc-transitions", type=int, help="expert transitions the clone learns from (default: the task's)")
    parser.add_argument("--bc-epochs", type=int, help="behaviour cloning passes over them (default: the task's)")
    parser.add_argument("--ref-kl-coef", type=float, default=MethodOptions.ref_kl_coef)
    parser.add_argument("--models-only", action="store_true", help="train and evaluate the experts and clones only")
    parser.add_argument("--summary", action="store_true", help="print the tables and draw the figures, run nothing")
    parser.add_argument(
        "--write-minari",
        action="store_true",
        help="write each task's demonstrations (the clone's data, from the committed expert) as a local Minari "
        "dataset under MINARI_DATASETS_PATH (default ~/.minari/datasets), run nothing else; needs the minari extra",
    )
    args, dispatch, results = parse_arguments(parser)
    protocol = None if args.protocol is None else PROTOCOLS[args.protocol]
    args.tasks = args.tasks or (DEFAULT_TASKS if protocol is None else protocol.tasks)
    if protocol is not None:
        if args.eval_episodes not in (None, protocol.eval_episodes):
            parser.error(
                f"--protocol {args.protocol} evaluates {protocol.eval_episodes} episodes, not --eval-episodes {args.eval_episodes}"
            )
        args.eval_episodes = protocol.eval_episodes
        if args.results_dir is None:
            results = ResultsDir(DEFAULT_ROOT / protocol.folder)
    if args.summary:
        if protocol is None:
            report(results)
        else:
            protocol_report(results, protocol, args.tasks)
        return
    tasks = {task_id: dataclasses.replace(TASKS[task_id], **overrides(args)) for task_id in args.tasks}
    if args.write_minari:
        for task_id, task in tasks.items():
            try:
                dataset = write_minari_dataset(results, task_id, task)
            except (FileExistsError, FileNotFoundError) as error:
                sys.exit(f"error: {error}")
            print(f"{dataset.id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")
        return
    # each task's methods: the command line's, else the protocol's for that task, else all
    methods = {
        task_id: args.methods or (list(METHODS) if protocol is None else protocol.methods_of(task_id)) for task_id in tasks
    }
    seeds = args.seeds or (SEEDS if protocol is None else protocol.seeds)
    options = MethodOptions(args.ref_kl_coef)
    if protocol is not None:
        copy_models(ResultsDir(), results, tasks)
    with exit_on_failure():
        run(results, tasks, methods, seeds, options, models_only=args.models_only, **dispatch)


if __name__ == "__main__":
    main()
