"""The paper's Table 1 benchmark: the grid, its runs, their data, statistics, figures and report."""
