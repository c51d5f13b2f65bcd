"""What is done with sampled paths: the ``Trajectories`` container, distributional comparisons
(``compare``), covariance metrics (correlation, ranks) and plots."""

from .compare import Comparison, ComparisonRow, compare
from .metrics import correlation, effective_rank, offdiag_mean, pair_correlations, stable_rank
from .plotting import plot_correlation_bands
from .trajectories import Trajectories

__all__ = ["Comparison", "ComparisonRow", "Trajectories", "compare", "correlation",
           "effective_rank", "offdiag_mean", "pair_correlations", "plot_correlation_bands",
           "stable_rank"]
