"""hwnas search: ProxylessNAS-style differentiable supernet search with a latency loss."""

__all__: list[str] = []
