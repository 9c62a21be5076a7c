"""hwnas predictor: latency lookup tables and regression models fitted to stored measurements."""

__all__: list[str] = []
