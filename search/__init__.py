"""hwnas search: ProxylessNAS-style differentiable supernet search with a latency loss
(Cai, Zhu, Han, ICLR 2019, arXiv 1812.00332).

The search sees latency only through `LatencyPredictor` (``predict_ms(blocks) -> array``).
"""

from search.latency import LatencyPredictor, LatencyTable, SearchError, latency_loss
from search.supernet import MixedOp, Supernet
from search.train import SearchConfig, run_search, train_arch

__all__ = ["LatencyPredictor", "LatencyTable", "SearchError", "latency_loss", "MixedOp", "Supernet",
           "SearchConfig", "run_search", "train_arch"]
