"""Numeric features of a `BlockSpec`, for the regression predictors.

The feature vector is versioned: `FEATURE_VERSION` changes whenever a column is added, removed,
reordered or computed differently, and a saved predictor records the version it was fitted with
(loading refuses a mismatch, because the saved coefficients would silently mean something else).

Version 1 columns (`FEATURE_NAMES`), per block at batch 1, fp32:

====================  ===============================================================================
mflops                2 x multiply-accumulates / 1e6 (`profiler.blocks.flops`)
kparams               weights after folding BatchNorm into the convolutions (biases included) / 1e3
mb_read               bytes read / 1e6: input activation + weights + every intermediate activation
                      that a later layer of the block reads back (expanded and depthwise maps, SE)
mb_written            bytes written / 1e6: output activation + every intermediate activation
in_h in_w in_c        input shape (pixels, pixels, channels)
out_h out_w out_c     output shape (the classifier's output is 1 x 1 x classes)
mid_c                 middle (expanded) channels of an MBConv, else the input channels
kernel stride         spatial kernel (pixels) and stride
expand                expand ratio (mid_c / in_c; 1 for non-MBConv blocks)
groups                groups of the 1x1 convolutions of an MBConv
residual se hs        0/1 flags
kind_*                one-hot of the block kind (`profiler.blocks.KINDS`, in that order)
====================  ===============================================================================

The byte counts are a simple memory-traffic model (each tensor read or written once), not a cache
simulation; they are there because small blocks on phones are bound by memory, not arithmetic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from profiler.blocks import KINDS, BlockSpec, se_channels, flops

__all__ = ["FEATURE_VERSION", "FEATURE_NAMES", "features", "block_params", "block_bytes"]

FEATURE_VERSION = 1

_NUMERIC = ("mflops", "kparams", "mb_read", "mb_written", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c",
            "mid_c", "kernel", "stride", "expand", "groups")
_FLAGS = ("residual", "se", "hs")
FEATURE_NAMES: tuple[str, ...] = _NUMERIC + _FLAGS + tuple(f"kind_{k}" for k in KINDS)

#: columns that are counts or sizes (log-transformed for the log-space models); the rest are flags
LOG_COLUMNS = tuple(range(len(_NUMERIC)))
# the first four are in millions / thousands: back to plain counts before log1p, so that log1p is
# log for any real block (a 0.01 MFLOP block is 10,000 FLOPs) and 0 stays 0 (pooling has no FLOPs)
_UNSCALE = np.array([1e6, 1e3, 1e6, 1e6] + [1.0] * (len(_NUMERIC) - 4))

_FP32 = 4  # bytes per element


def block_params(spec: BlockSpec) -> int:
    """Weights of the block with BatchNorm folded into each convolution (count, biases included)."""
    k = spec.kind
    if k in ("conv", "final_conv", "pooled_conv"):
        return spec.kernel * spec.kernel * spec.in_c * spec.out_c + spec.out_c
    if k == "logits":
        return spec.in_c * spec.out_c + spec.out_c
    if k == "mbconv":
        mid, g = spec.mid_c, spec.groups
        n = 0
        if mid != spec.in_c:  # expand ratio 1 has no expansion conv
            n += spec.in_c * mid // g + mid
        n += mid * spec.kernel * spec.kernel + mid
        if spec.se:
            red = se_channels(mid)
            n += mid * red + red + red * mid + mid
        n += mid * spec.out_c // g + spec.out_c
        return n
    return 0  # zero, pool


def block_bytes(spec: BlockSpec) -> tuple[int, int]:
    """(bytes read, bytes written) of one forward pass, fp32; see the module docstring."""
    act_in = spec.in_h * spec.in_w * spec.in_c
    act_out = spec.out_h * spec.out_w * spec.out_c
    weights = block_params(spec)
    inter_rw = 0  # elements written by one layer and read back by the next, inside the block
    if spec.kind == "zero":
        return 0, 0
    if spec.kind == "mbconv":
        if spec.mid_c != spec.in_c:
            inter_rw += spec.in_h * spec.in_w * spec.mid_c  # expanded map
        inter_rw += spec.out_h * spec.out_w * spec.mid_c  # depthwise output
        if spec.residual:
            act_in *= 2  # the identity branch reads the input a second time
    read = act_in + weights + inter_rw
    written = act_out + inter_rw
    return _FP32 * read, _FP32 * written


def _row(spec: BlockSpec) -> list[float]:
    rd, wr = block_bytes(spec)
    mid = spec.mid_c if spec.kind == "mbconv" else spec.in_c
    row = [flops(spec) / 1e6, block_params(spec) / 1e3, rd / 1e6, wr / 1e6,
           spec.in_h, spec.in_w, spec.in_c, spec.out_h, spec.out_w, spec.out_c, mid, spec.kernel, spec.stride,
           spec.expand_ratio, spec.groups,
           float(spec.residual), float(spec.se), float(spec.hs)]
    row += [float(spec.kind == k) for k in KINDS]
    return row


def features(blocks: Sequence[BlockSpec]) -> np.ndarray:
    """Feature matrix, float64 of shape (len(blocks), len(FEATURE_NAMES)); columns as documented above."""
    if not len(blocks):
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.asarray([_row(b) for b in blocks], dtype=float)


def log_features(x: np.ndarray) -> np.ndarray:
    """log of the size columns, flags unchanged: the inputs of the log-space models.

    FLOPs, weights and bytes: log1p of the plain count; shapes, kernel, stride, expand ratio and groups
    (all >= 1 or a positive ratio): log.
    """
    out = np.array(x, dtype=float, copy=True)
    out[:, :4] = np.log1p(out[:, :4] * _UNSCALE[:4])
    out[:, 4:len(_NUMERIC)] = np.log(np.maximum(out[:, 4:len(_NUMERIC)], 1e-9))
    return out
