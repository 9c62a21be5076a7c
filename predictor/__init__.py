"""hwnas predictor: latency lookup tables and regression models fitted to stored measurements.

Every predictor answers ``predict_ms(blocks) -> np.ndarray`` (ms per block; the zero op costs 0) and
``predict_network_ms(arch) -> float`` (the block sum plus a fitted per-network overhead). A lookup
table raises `UnknownBlockError` (a `KeyError`) for a block it lacks; it never makes a number up.
"""

from predictor._base import Predictor, PredictorError, UnknownBlockError
from predictor._fit import MODELS, fit_predictor
from predictor.evaluate import cross_validate, metrics
from predictor._metrics import fold_indices
from predictor.features import FEATURE_VERSION
from predictor.io import load_predictor, read_lut_yaml, save_predictor
from predictor.lut import HybridPredictor, LookupTable
from predictor.network import fit_networks
from predictor.regression import RegressionPredictor

__all__ = ["FEATURE_VERSION", "MODELS", "fold_indices", "HybridPredictor", "LookupTable", "Predictor", "PredictorError", "RegressionPredictor",
           "UnknownBlockError", "cross_validate", "fit_networks", "fit_predictor", "load_predictor", "metrics",
           "read_lut_yaml", "save_predictor"]
