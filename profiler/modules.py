"""torch modules for each BlockSpec kind (MobileNetV2 inverted residuals, Sandler et al. 2018;
squeeze-excite and h-swish as in MobileNetV3, Howard et al. 2019; grouped 1x1 convolutions with a
channel shuffle as in FBNet, Wu et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn as nn

from profiler.blocks import BlockSpec, se_channels

__all__ = ["ConvBNAct", "SqueezeExcite", "ChannelShuffle", "MBConv", "Logits", "GlobalAvgPool", "PooledConv",
           "build_block"]


def _act(hs: bool) -> nn.Module:
    return nn.Hardswish() if hs else nn.ReLU6()


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: nn.Module | None = None):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        red = se_channels(channels)
        self.reduce = nn.Conv2d(channels, red, 1)
        self.expand = nn.Conv2d(red, channels, 1)
        self.act = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> (SE) -> 1x1 project (+ identity)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        layers: list[nn.Module] = []
        if spec.mid_c != spec.in_c:
            layers.append(ConvBNAct(spec.in_c, spec.mid_c, 1, 1, spec.groups, _act(spec.hs)))
            if spec.groups > 1:
                layers.append(ChannelShuffle(spec.groups))
        layers.append(ConvBNAct(spec.mid_c, spec.mid_c, spec.kernel, spec.stride, spec.mid_c, _act(spec.hs)))
        if spec.se:
            layers.append(SqueezeExcite(spec.mid_c))
        layers.append(ConvBNAct(spec.mid_c, spec.out_c, 1, 1, spec.groups, None))
        self.body = nn.Sequential(*layers)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Logits(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.pool = (spec.in_h, spec.in_w) != (1, 1)
        self.fc = nn.Linear(spec.in_c, spec.out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = x.mean((2, 3))
        else:
            x = x.flatten(1)
        return self.fc(x)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class PooledConv(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv = nn.Conv2d(spec.in_c, spec.out_c, 1, bias=True)
        self.act = _act(spec.hs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def build_block(spec: BlockSpec, seed: int = 0) -> nn.Module:
    """The module of `spec`, with weights drawn from a fixed seed (the global RNG is left as it was),
    so every backend and every process builds the same weights for the same key."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec)


def _build(spec: BlockSpec) -> nn.Module:
    if spec.kind == "conv":
        return ConvBNAct(spec.in_c, spec.out_c, spec.kernel, spec.stride, 1, _act(spec.hs))
    if spec.kind == "final_conv":
        return ConvBNAct(spec.in_c, spec.out_c, 1, 1, 1, _act(spec.hs))
    if spec.kind == "mbconv":
        return MBConv(spec)
    if spec.kind == "zero":
        return nn.Identity()
    if spec.kind == "pool":
        return GlobalAvgPool()
    if spec.kind == "pooled_conv":
        return PooledConv(spec)
    if spec.kind == "logits":
        return Logits(spec)
    raise ValueError(f"no module for kind {spec.kind!r}")
