"""torch modules for the decomposition tests (tests/test_decompose.py); named by the CLI as
``decompose_models:FACTORY`` (this folder is on sys.path under pytest).

`MobileNetV2` follows torchvision's ``torchvision/models/mobilenetv2.py`` (Sandler et al. 2018):
written out here because torchvision is not installed, and with its own classes (Conv2dNormActivation
as a Sequential, InvertedResidual with ``use_res_connect``, adaptive pooling + flatten + dropout +
linear), so that it exercises a graph built by code other than `profiler.modules`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: torchvision's inverted residual setting: expand t, channels c, repeats n, first stride s
MBV2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                [6, 320, 1, 1]]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel=1))
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, setting=MBV2_SETTING, last_channel: int = 1280):
        super().__init__()
        cin = 32
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, expand_ratio=t))
                cin = c
        features.append(ConvBNReLU(cin, last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


def mobilenet_v2_small() -> nn.Module:
    """Fewer stages and classes: a quick CLI test."""
    return MobileNetV2(num_classes=10, setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]], last_channel=64)


class V3Head(nn.Module):
    """A MobileNetV3-style net: h-swish stem, an SE + h-swish inverted residual, pool -> 1x1 conv -> linear."""

    def __init__(self):
        super().__init__()
        from profiler.modules import MBConv
        from profiler.blocks import BlockSpec

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.block = MBConv(BlockSpec.mbconv(16, 16, 16, 4, 5, 1, se=True, hs=True))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.Hardswish())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = self.head(x.mean((2, 3), keepdim=True))
        return self.fc(x.flatten(1))


class WithLSTM(nn.Module):
    """A conv stem whose features are read by an LSTM: the LSTM matches no block kind."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNReLU(3, 8, stride=2)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).flatten(2).transpose(1, 2)
        return self.fc(self.lstm(y)[0][:, -1])


@torch.library.custom_op("hwnas_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    """MobileNetV2-small with a custom op between two blocks."""

    def __init__(self):
        super().__init__()
        self.net = mobilenet_v2_small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.features
        x = f[1](f[0](x))
        x = mystery(x)
        for m in f[2:]:
            x = m(x)
        return self.net.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("weights file missing")


def tiny_arch() -> nn.Module:
    """A network our own ArchSpec builds (the `tiny` space, the last candidate everywhere)."""
    from profiler.spaces import load_space

    space = load_space("tiny")
    return space.arch([len(space.layers[i].candidates) - 1 for i in space.searchable]).build()


class WithSiLU(nn.Module):
    """An EfficientNet-style stem (SiLU): no block kind has that activation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stem(x).mean((2, 3)))
