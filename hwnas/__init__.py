"""hwnas: on-device latency profiling and hardware-aware neural architecture search.

This small package is the front (the `hwnas` command); the work lives in `profiler`,
`predictor` and `search`, which never import it.
"""

__version__ = "0.1.0"
