"""
Turn the Table 1 grid's results (``python -m benchmarks.run``) into ``benchmarks/RESULTS.md`` and figures.

For each budget (timesteps per run) found in ``results/table1.csv``:

- Table 1 with the paper's normalisation: per env, the random policy scores 0 (``results/table1_random.csv``,
  measured with ``python -m benchmarks.run --random``) and the best of the paper's 11 settings (by mean score on
  that env) scores 1; ours at each budget beside the paper's column, and the Spearman rank correlation between
  our ordering of the settings and the paper's;
- the statistics of rliable (Agarwal et al. 2021, https://arxiv.org/abs/2108.13264): the IQM and the mean of
  the normalised scores with stratified-bootstrap 95% intervals, a performance profile
  (``results/table1_<budget>_profile.png``), and every PPOKL setting's probability of improvement over clip-0.2;
- how well beta holds ``d`` to the target: per adaptive setting and env, the share of updates with ``d`` inside
  ``[kl_target / 1.5, kl_target * 1.5]``, above and below;
- the decision on a clip + penalty recommendation (issue 20's three conditions);
- per env: training and deterministic-evaluation scores (mean ± s.e.), ``d`` and std; raw scores (mean ± std);
- ``results/table1_<budget>_curves.png``: reward (mean of the last 100 episodes) against timesteps, per family of
  settings and env;
- ``results/table1_<budget>_kl.png``: d (the KL of each update), beta and the action std over training, per family
  of settings and env.

    python -m benchmarks.report                        # benchmarks/results -> benchmarks/RESULTS.md, results/*.png
    python -m benchmarks.report --results-dir DIR      # DIR's CSVs and curves -> DIR/RESULTS.md and DIR/*.png
"""

import argparse
from pathlib import Path

from benchmarks.results import DEFAULT_ROOT, ResultsDir
from benchmarks.table1.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        help="read the results in DIR and write DIR/RESULTS.md and the figures there (default: the results in "
        "benchmarks/results, the report in benchmarks/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    if args.results_dir is None:
        write_report(ResultsDir(), DEFAULT_ROOT.parent / "RESULTS.md")
    else:
        write_report(ResultsDir(args.results_dir), args.results_dir / "RESULTS.md")


if __name__ == "__main__":
    main()
