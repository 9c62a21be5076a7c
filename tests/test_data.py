"""Fashion-MNIST from IDX files: the reader on small files written here (and on damaged ones), the
split with the official test set kept, the one-line errors, and the real files of Debian's package."""

import gzip
import json

import numpy as np
import pytest
import torch

import search.data as data_mod
from hwnas.cli import main
from profiler.spaces import load_space
from search.data import FASHION_MNIST_ENV, load_data, read_idx
from search.latency import SearchError


def _idx(arr: np.ndarray) -> bytes:
    """``arr`` (uint8) as IDX bytes: 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write_set(folder, n_train=40, n_test=20, seed=0, gz=True):
    """A small Fashion-MNIST-shaped IDX set; returns its arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8)}
    for stem, arr in arrays.items():
        raw = _idx(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.fixture
def small_set(tmp_path, monkeypatch):
    folder = tmp_path / "fmnist"
    arrays = _write_set(folder)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(folder))
    return folder, arrays


def test_read_idx_reads_what_was_written(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(arr)))
    (tmp_path / "a").write_bytes(_idx(arr))
    assert np.array_equal(read_idx(tmp_path / "a.gz", 3), arr)
    assert np.array_equal(read_idx(tmp_path / "a", 3), arr)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: gzip.compress(raw)[:-30], "unreadable"),                        # cut gzip stream
    (lambda raw: b"not gzip at all" * 4, "unreadable"),                          # not gzip
    (lambda raw: gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]), "magic 00000d03"),  # float type code
    (lambda raw: gzip.compress(raw[:4 + 12] + raw[4 + 12:-5]), "truncated"),      # data cut short
    (lambda raw: gzip.compress(raw + b"\x00"), "truncated or corrupt"),           # a byte too many
    (lambda raw: gzip.compress(b"\x00\x00\x08\x01" + raw[4:]), "magic 00000801, expected 00000803"),  # labels' header on images
])
def test_read_idx_refuses_a_damaged_file_in_one_line(tmp_path, damage, message):
    raw = _idx(np.zeros((3, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(raw))
    with pytest.raises(SearchError, match=message) as e:
        read_idx(path, 3)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(e.value)


def test_fashion_mnist_keeps_the_official_test_split(small_set):
    folder, arrays = small_set
    d = load_data("fashion-mnist", 28, 1, seed=0)
    assert d.num_classes == 10 and d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    assert (len(d.train), len(d.valid), len(d.test)) == (34, 6, 20)  # train : valid = 85 : 15
    assert torch.equal(d.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    # the test images are the t10k file's, in order, normalised with the train part's mean and std
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255.0
    x0 = d.test[0][0]
    assert x0.shape == (1, 28, 28)
    assert torch.corrcoef(torch.stack([x0.flatten(), raw[0].flatten()]))[0, 1] > 0.999
    # train and valid are a partition of the train file
    seen = sorted(d.train.y.tolist() + d.valid.y.tolist())
    assert seen == sorted(arrays["train-labels-idx1-ubyte"].tolist())
    assert "fashion-mnist (40 train+valid images, 20 test images" in d.description


def test_fashion_mnist_limit_takes_the_first_training_images_only(small_set):
    folder, arrays = small_set
    d = load_data("fashion-mnist", 32, 3, seed=1, limit=20)
    assert len(d.train) + len(d.valid) == 20 and len(d.test) == 20
    assert sorted(d.train.y.tolist() + d.valid.y.tolist()) == sorted(arrays["train-labels-idx1-ubyte"][:20].tolist())
    assert d.train[0][0].shape == (3, 32, 32) and d.test[0][0].shape == (3, 32, 32)


def test_fashion_mnist_reads_uncompressed_files_too(tmp_path, monkeypatch):
    _write_set(tmp_path / "plain", gz=False)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "plain"))
    assert len(load_data("fashion-mnist", 28, 1).test) == 20


def test_fashion_mnist_mismatched_files_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    _write_set(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(39, np.uint8))))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(folder))
    with pytest.raises(SearchError, match="40 images but .* 39 labels"):
        load_data("fashion-mnist", 28, 1)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.full(40, 10, np.uint8))))
    with pytest.raises(SearchError, match="label 10 outside 0..9"):
        load_data("fashion-mnist", 28, 1)


def test_absent_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data_mod, "_FASHION_MNIST_DEFAULT", str(tmp_path / "nowhere"))
    with pytest.raises(SearchError, match="install it with: apt-get install dataset-fashion-mnist$"):
        load_data("fashion-mnist", 28, 1)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "empty"))
    with pytest.raises(SearchError, match=f"\\${FASHION_MNIST_ENV}"):
        load_data("fashion-mnist", 28, 1)


def test_cli_absent_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data_mod, "_FASHION_MNIST_DEFAULT", str(tmp_path / "nowhere"))
    arch = tmp_path / "arch.json"
    arch.write_text(load_space("tiny-mnist").arch([0] * 7).to_json())
    assert main(["train", "--arch", str(arch), "--data", "fashion-mnist", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install dataset-fashion-mnist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_real_fashion_mnist_files():
    folder = data_mod.fashion_mnist_dir()
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not installed in {folder} (apt-get install dataset-fashion-mnist)")
    d = load_data("fashion-mnist", 28, 1, seed=0, limit=1000)
    assert len(d.train) + len(d.valid) == 1000
    assert len(d.test) == 10_000 and torch.bincount(d.test.y).tolist() == [1000] * 10  # the official split
    assert read_idx(folder / "train-labels-idx1-ubyte.gz", 1).shape == (60_000,)
    # real images (not blank), normalised with the train part's statistics: near mean 0, std 1
    x = torch.stack([d.test[i][0] for i in range(500)])
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    assert 0.2 < float(d.train.x.mean()) < 0.4  # Fashion-MNIST's mean grey level is about 0.29
    json.dumps(d.classes)  # plain strings, fit for a log
