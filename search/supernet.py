"""The over-parameterised network of a search space, with binarised paths.

Implements the supernet of ProxylessNAS (Cai, Zhu, Han, ICLR 2019, arXiv 1812.00332, section 3):
each searchable layer is a mixed op over its candidate blocks with architecture parameters
``alpha`` (one logit per candidate, probabilities ``p = softmax(alpha)``).

Modes (passed to the constructor; nothing is switched on the class):

- ``"binary"`` (ProxylessNAS, section 3.2): the weight step runs one sampled path per layer; the
  architecture step samples two paths per layer, runs only the chosen one in the forward pass and
  computes the binary-gate gradient ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` over the
  two, where ``dL/dg_j = <dL/dy, o_j(x)>``; `Supernet.rescale_pairs` then offsets the two logits so
  that the paths not sampled keep their probabilities.
- ``"reinforce"`` (section 3.2.1): one sampled path per layer in both steps; the architecture
  gradient comes from the score function (see `search.train`).
- ``"all"`` (DARTS, Liu et al., ICLR 2019): every candidate runs and the layer output is the
  ``p``-weighted sum: the memory baseline.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from profiler.blocks import ArchSpec
from profiler.spaces import SearchSpace

__all__ = ["MixedOp", "Supernet", "MODES"]

MODES = ("binary", "reinforce", "all")


class _BinaryGateFn(torch.autograd.Function):
    """y = o_active(x) in the forward pass; the backward pass gives dL/dx through the active path
    and dL/dalpha through the binary gates of the two sampled paths (ProxylessNAS eq. 4).

    Only the active path's activations are kept for the backward pass; the other sampled path is
    run once more in the backward pass without a graph, to get its gate gradient ``<dL/dy, o_j(x)>``.
    """

    @staticmethod
    def forward(ctx, x, alpha, op: "MixedOp"):
        pair = op._pair
        assert pair is not None
        x_leaf = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            y = op.candidates[op._active](x_leaf)
        ctx.op, ctx.pair, ctx.active = op, pair, op._active
        ctx.save_for_backward(x_leaf, y, alpha)
        return y.detach()

    @staticmethod
    def backward(ctx, grad_y):
        x_leaf, y, alpha = ctx.saved_tensors
        op, pair, active = ctx.op, ctx.pair, ctx.active
        grad_x = None
        if x_leaf.requires_grad:  # the weights' gradients are not needed in an architecture step
            (grad_x,) = torch.autograd.grad(y, x_leaf, grad_y)
        gate_grad = torch.zeros(2, dtype=grad_y.dtype)
        with torch.no_grad():
            for k, j in enumerate(pair):
                out = y.detach() if j == active else op.candidates[j](x_leaf.detach())
                gate_grad[k] = (grad_y * out).sum()
            p = torch.softmax(alpha.detach()[list(pair)], 0)
            # dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i), over the two sampled paths
            a_grad = torch.zeros_like(alpha)
            for a, i in enumerate(pair):
                a_grad[i] = sum(gate_grad[b] * p[b] * ((1.0 if a == b else 0.0) - p[a]) for b in range(2))
        op.last_gate_grad = gate_grad
        return grad_x, a_grad, None


class MixedOp(nn.Module):
    """A searchable layer: its candidate modules and their architecture logits ``alpha`` (shape (n,)).

    Which path(s) run is set explicitly before each forward pass with `set_path` (one path) or
    `set_pair` (binarised architecture step); ``mode="all"`` runs every path, weighted by ``p``.
    Input and output are NCHW tensors of the layer's shapes.
    """

    def __init__(self, candidates: Sequence[nn.Module], mode: str = "binary"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.candidates = nn.ModuleList(candidates)
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.mode = mode
        self._active: int = 0
        self._pair: tuple[int, int] | None = None
        self._fixed: int | None = None  # set by Supernet.fixed_paths: overrides the mode
        self.last_gate_grad: torch.Tensor | None = None  # dL/dg of the last binarised backward (shape (2,))

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)

    def set_path(self, index: int) -> None:
        self._active, self._pair = int(index), None

    def set_pair(self, pair: tuple[int, int], active: int) -> None:
        if active not in pair or pair[0] == pair[1]:
            raise ValueError(f"active path {active} must be one of two distinct sampled paths {pair}")
        self._pair, self._active = (int(pair[0]), int(pair[1])), int(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fixed is not None:
            return self.candidates[self._fixed](x)
        if self.mode == "all":
            p = self.probs
            return sum(p[j] * op(x) for j, op in enumerate(self.candidates))
        if self._pair is not None and self.alpha.requires_grad and torch.is_grad_enabled():
            return _BinaryGateFn.apply(x, self.alpha, self)
        return self.candidates[self._active](x)


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class Supernet(nn.Module):
    """The whole over-parameterised network of `space` (input NCHW (B, C, H, W) -> logits (B, classes)).

    Fixed layers are plain modules; each searchable layer is a `MixedOp` over
    ``BlockSpec.build()`` of its candidates (the zero op is an identity: the layer is skipped).
    Weights are initialised from ``seed`` (blocks built by key share a fixed seed otherwise).
    """

    def __init__(self, space: SearchSpace, mode: str = "binary", seed: int = 0):
        super().__init__()
        self.space = space
        self.mode = mode
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in space.layers:
                mods = [c.build().train() for c in layer.candidates]
                for m in mods:
                    _reinit(m)
                layers.append(MixedOp(mods, mode) if layer.searchable else mods[0])
        self.layers = nn.ModuleList(layers)

    # ---- parameters -----------------------------------------------------------------------
    @property
    def mixed(self) -> list[MixedOp]:
        return [m for m in self.layers if isinstance(m, MixedOp)]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def probs(self, temperature: float = 1.0) -> list[torch.Tensor]:
        """Per searchable layer, the candidate probabilities (differentiable); with ``temperature``
        below 1, ``softmax(alpha / temperature)``: sharpened toward the argmax network."""
        return [torch.softmax(m.alpha / temperature, 0) for m in self.mixed]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    # ---- sampling (the generator is shared and seeded, so every rank draws the same paths) --
    def sample_paths(self, gen: torch.Generator) -> list[int]:
        """One path per layer, drawn from ``p``; set as the active paths. Returns the choices."""
        choices = []
        for m in self.mixed:
            c = int(torch.multinomial(m.probs.detach(), 1, generator=gen))
            m.set_path(c)
            choices.append(c)
        return choices

    def sample_pairs(self, gen: torch.Generator) -> list[tuple[tuple[int, int], int]]:
        """Two distinct paths per layer drawn from ``p`` without replacement, and the active one of
        the two drawn from their renormalised probabilities (ProxylessNAS section 3.2.1)."""
        out = []
        for m in self.mixed:
            p = m.probs.detach()
            pair = tuple(int(i) for i in torch.multinomial(p, 2, replacement=False, generator=gen))
            q = p[list(pair)] / p[list(pair)].sum()
            active = pair[int(torch.multinomial(q, 1, generator=gen))]
            m.set_pair(pair, active)
            out.append((pair, active))
        return out

    def clear_pairs(self) -> None:
        for m in self.mixed:
            m._pair = None

    def mask_arch_grads_to_pairs(self) -> None:
        """Zero the logits' gradients outside the sampled pairs (the expected-latency term's
        gradient reaches every logit); with `rescale_pairs` the unsampled probabilities stay put."""
        for m in self.mixed:
            if m.alpha.grad is not None and m._pair is not None:
                keep = torch.zeros_like(m.alpha.grad)
                keep[list(m._pair)] = 1.0
                m.alpha.grad.mul_(keep)

    @torch.no_grad()
    def rescale_pairs(self, before: Sequence[torch.Tensor]) -> None:
        """After an optimiser step on the logits, offset the two sampled logits of each layer so
        ``sum_{j in pair} exp(alpha_j)`` is what it was: the other paths' probabilities are unchanged."""
        for m, old in zip(self.mixed, before):
            if m._pair is None:
                continue
            idx = list(m._pair)
            offset = torch.logsumexp(old[idx], 0) - torch.logsumexp(m.alpha[idx], 0)
            m.alpha[idx] += offset

    @contextlib.contextmanager
    def fixed_paths(self, choices: Sequence[int]) -> Iterator[None]:
        """Run one given path per layer (whatever the mode), e.g. to evaluate the argmax network."""
        for m, c in zip(self.mixed, choices, strict=True):
            m._fixed = int(c)
        try:
            yield
        finally:
            for m in self.mixed:
                m._fixed = None

    # ---- the result ------------------------------------------------------------------------
    def argmax_choices(self) -> list[int]:
        return [int(torch.argmax(m.alpha.detach())) for m in self.mixed]

    def derive(self, name: str = "", meta: dict | None = None) -> ArchSpec:
        """The most likely network (argmax per layer) as an ArchSpec, with the probabilities in meta."""
        arch = self.space.arch(self.argmax_choices(), name or f"{self.space.name}-searched")
        m = {"space": self.space.name, "choices": self.argmax_choices(),
             "probabilities": [[round(float(v), 6) for v in p.detach()] for p in self.probs()]}
        m.update(meta or {})
        return ArchSpec(arch.blocks, arch.input_size, arch.num_classes, arch.name, m)

    def derived_state_dict(self, choices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights of the network with ``choices``, keyed for ``ArchSpec.build()`` (an nn.Sequential)."""
        sd = self.state_dict()
        it = iter(choices)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            prefix = f"layers.{i}."
            if isinstance(layer, MixedOp):
                prefix += f"candidates.{next(it)}."
            for k, v in sd.items():
                if k.startswith(prefix):
                    out[f"{i}.{k[len(prefix):]}"] = v.clone()
        return out
