"""Derive a network from a finished search under a latency target, with a latency table that may
differ from the one the search used (the closed loop: a refitted network model).

The search leaves a probability per candidate of each searchable layer. The most likely network
under a latency bound is

    max_c  sum_i log p_i[c_i]   subject to   fixed + sum_i L_i[c_i] <= target

a multiple-choice knapsack, solved exactly by dynamic programming over the latency budget cut into
``bins`` steps (each candidate's latency rounded up to whole steps, so a network the program calls
feasible is feasible). Without a target, or where the plain argmax network meets it, that network
is returned unchanged.

With width choices (`search.latency.WidthLatency`) a layer's latency depends on its stage widths,
so the layers no longer separate; but for a fixed width assignment they do. The most likely network
is then the best over every width assignment (at most 3^6 = 729 for six stages of three widths) of
that assignment's log-probability plus the knapsack's under it: exact as well. An assignment whose
log-probability plus the best ops' cannot beat the best found so far is skipped.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from profiler.blocks import ArchSpec
from profiler.spaces import SearchSpace
from search.latency import LatencyPredictor, LatencyTable, SearchError

__all__ = ["derive_under_target", "derive_network", "NetworkLatencyPredictor"]


def derive_under_target(table: LatencyTable, probabilities: Sequence[Sequence[float]],
                        target_ms: float | None, bins: int = 4000) -> list[int]:
    """Choices (one candidate index per searchable layer) of the most likely network whose block sum
    (``table``, ms) is at most ``target_ms``; the fastest network of the table where none meets it.

    With width choices, ``probabilities`` hold one row per stage after the layers' rows, and the
    choices one width index per stage after the ops'.

    Raises `SearchError` when ``probabilities`` do not match the table's layers.
    """
    if table.width is not None:
        return _derive_with_widths(table, probabilities, target_ms, bins)
    if len(probabilities) != len(table.layers) or any(len(p) != len(t) for p, t in zip(probabilities, table.layers)):
        raise SearchError(f"{len(probabilities)} probability rows do not match the {len(table.layers)} layers of the "
                          "latency table; derive with the space the search ran on")
    logp = [np.log(np.clip(np.asarray(p, dtype=float), 1e-12, 1.0)) for p in probabilities]
    best = [int(np.argmax(lp)) for lp in logp]
    if target_ms is None or table.arch_ms(best) <= target_ms:
        return best
    fastest = [int(np.argmin(lat)) for lat in table.layers]
    budget = target_ms - table.fixed_ms
    if table.arch_ms(fastest) > target_ms or budget <= 0:
        return fastest  # nothing meets it: the fastest there is
    step = budget / bins
    score = np.full(bins + 1, -np.inf)  # best log-probability of the layers so far, by budget used
    score[0] = 0.0
    back = []
    for lp, lat in zip(logp, table.layers):
        cost = np.ceil(np.asarray(lat) / step - 1e-9).astype(int)
        new, arg = np.full(bins + 1, -np.inf), np.full(bins + 1, -1)
        for j, (c, v) in enumerate(zip(cost, lp)):
            if c > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[c:] = score[: bins + 1 - c] + v
            better = cand > new
            new[better], arg[better] = cand[better], j
        score = new
        back.append((arg, cost))
    end = int(np.argmax(score))
    if not np.isfinite(score[end]):
        return fastest  # the rounding left no feasible network: be safe
    choices = []
    for arg, cost in reversed(back):
        j = int(arg[end])
        choices.append(j)
        end -= int(cost[j])
    return choices[::-1]


def _derive_with_widths(table: LatencyTable, probabilities: Sequence[Sequence[float]], target_ms: float | None,
                        bins: int) -> list[int]:
    """`derive_under_target` for a table with width choices: the best over every width assignment."""
    w = table.width
    assert w is not None
    n = len(table.layers)
    if len(probabilities) != n + w.stages or any(len(p) != w.n_widths for p in probabilities[n:]):
        raise SearchError(f"{len(probabilities)} probability rows do not match the {n} layers and {w.stages} width "
                          "stages of the latency table; derive with the space the search ran on")
    ops_p, width_p = list(probabilities[:n]), probabilities[n:]
    logw = [np.log(np.clip(np.asarray(p, dtype=float), 1e-12, 1.0)) for p in width_p]
    logp = [np.log(np.clip(np.asarray(p, dtype=float), 1e-12, 1.0)) for p in ops_p]
    if target_ms is None:
        return [int(np.argmax(lp)) for lp in logp] + [int(np.argmax(lw)) for lw in logw]
    bound = float(sum(lp.max() for lp in logp))  # no assignment's ops score more than the argmax's
    ranked = sorted(w.assignments(), key=lambda ws: -sum(lw[i] for lw, i in zip(logw, ws)))
    best: tuple[float, list[int]] | None = None
    for ws in ranked:
        lw = float(sum(lv[i] for lv, i in zip(logw, ws)))
        if best is not None and lw + bound <= best[0]:
            break  # ranked by lw: no later assignment can win either
        sub = table.at_widths(ws)
        if sub.min_ms() > target_ms:
            continue
        ops = derive_under_target(sub, ops_p, target_ms, bins)
        if sub.arch_ms(ops) <= target_ms:
            score = lw + float(sum(lp[c] for lp, c in zip(logp, ops)))
            if best is None or score > best[0]:
                best = (score, ops + list(ws))
    if best is not None:
        return best[1]
    # nothing meets it: the fastest there is
    ws = min(w.assignments(), key=lambda a: table.at_widths(a).min_ms())
    sub = table.at_widths(ws)
    return [int(np.argmin(lat)) for lat in sub.layers] + list(ws)


class NetworkLatencyPredictor(LatencyPredictor, Protocol):
    """A latency predictor that also predicts whole networks: block latencies (ms) plus a
    per-network constant ``overhead_ms`` (what the sum of isolated blocks misses)."""

    overhead_ms: float

    def predict_network_ms(self, arch: ArchSpec) -> float: ...


def derive_network(space: SearchSpace, predictor: NetworkLatencyPredictor, probabilities: Sequence[Sequence[float]],
                   target_ms: float | None, name: str = "", meta: Mapping[str, Any] | None = None) -> ArchSpec:
    """The most likely network of a finished search under a whole-network latency target, with
    ``predictor``'s latencies, which may differ from the ones the search used (the closed loop derives
    again with a refitted network model).

    ``target_ms`` bounds the whole network (ms); the predictor's ``overhead_ms`` is taken off it to
    bound the block sum (`derive_under_target`). The network's ``meta``: ``choices``, then the given
    ``meta``, then ``predicted_network_ms`` (ms, by ``predictor``).

    Raises `SearchError` when ``probabilities`` do not fit the space, or the predictor lacks a block.
    """
    table = LatencyTable.build(space, predictor)
    block_target = None if target_ms is None else target_ms - predictor.overhead_ms
    choices = derive_under_target(table, probabilities, block_target)
    arch = space.arch(choices, name)
    arch.meta.update(choices=choices, **dict(meta or {}))
    arch.meta["predicted_network_ms"] = float(predictor.predict_network_ms(arch))
    return arch
