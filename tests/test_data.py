"""Tests of discrete_vae.data: loaders on small files in each real format, and BatchIterator.

No test touches the network: loaders run with ``download=False`` (downloads: test_download.py).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from discrete_vae.data import DATASETS, BatchIterator, DataSplits, load_dataset, resolve_data_dir
from discrete_vae.data import binarized_mnist as bm_mod
from discrete_vae.data import idx as idx_mod
from discrete_vae.data import omniglot as omniglot_mod
from discrete_vae.data.batches import derive_seed
from discrete_vae.errors import ConfigError, DataError, MissingDataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLITS = ("train", "valid", "test")


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    """The exception's message, checked to be one non-empty line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and msg == msg.strip(), repr(msg)
    return msg


def write(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def amat_bytes(bits: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, row)) + "\n" for row in bits).encode()


def idx_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def random_bits(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.uint8)


# ---------------------------------------------------------------- registry and data folder
def test_registry_names_and_unknown_name():
    assert set(DATASETS) == {"binarized_mnist", "mnist", "fashion_mnist", "omniglot", "digits"}
    with pytest.raises(ConfigError) as excinfo:
        load_dataset("cifar", download=False)
    msg = one_line_error(excinfo)
    assert "cifar" in msg and "binarized_mnist" in msg and "omniglot" in msg


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DVAE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DVAE_DATA_DIR")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "discrete-vae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "discrete-vae"


# ---------------------------------------------------------------- binarized_mnist
@pytest.fixture
def small_sizes(monkeypatch):
    """Binarized MNIST's split sizes lowered to those :func:`write_binarized` writes (20 / 7 / 5)."""
    monkeypatch.setattr(bm_mod, "SIZES", dict(zip(SPLITS, (20, 7, 5), strict=True)))


def write_binarized(root: Path, gz: bool, sizes=(20, 7, 5)) -> dict[str, np.ndarray]:
    pairs = enumerate(zip(SPLITS, sizes, strict=True))
    bits = {split: random_bits(n, i) for i, (split, n) in pairs}
    for split in SPLITS:
        name = f"binarized_mnist_{split}.amat" + (".gz" if gz else "")
        write(root / name, amat_bytes(bits[split]))
    return bits


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("in_subdir", [False, True])
def test_binarized_mnist_loads(tmp_path, gz, in_subdir, small_sizes):
    bits = write_binarized(tmp_path / "binarized_mnist" if in_subdir else tmp_path, gz)
    data = load_dataset("binarized_mnist", tmp_path, download=False)
    assert data.image_shape == (28, 28) and data.dim == 784 and not data.dynamic_binarization
    for split in SPLITS:
        x = data.split(split)
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(bits[split].astype(np.float32)))


def test_binarized_mnist_any_whitespace_and_plain_preferred(tmp_path, small_sizes, monkeypatch):
    bits = write_binarized(tmp_path, gz=True)
    monkeypatch.setitem(bm_mod.SIZES, "train", 3)
    odd = "".join("  " + "\t".join(map(str, row)) + " \r\n\n" for row in bits["train"][:3])
    write(tmp_path / "binarized_mnist_train.amat", odd.encode())  # plain wins over .gz
    data = load_dataset("binarized_mnist", tmp_path, download=False)
    assert torch.equal(data.train, torch.from_numpy(bits["train"][:3].astype(np.float32)))


def edit_line(raw: bytes, i: int, new: str) -> bytes:
    lines = raw.decode().splitlines(keepends=True)
    return "".join(lines[:i] + [new] + lines[i + 1 :]).encode()


AMAT_CORRUPTIONS = {  # name: (suffix, good bytes -> bad bytes, words in the error)
    "truncated_gz": (".amat.gz", lambda g: gzip.compress(g)[:-30], "cannot read"),
    "783_wide": (".amat", lambda g: edit_line(g, 3, g[2:1568].decode()), "line 4 has 783 values"),
    "value_2": (".amat", lambda g: edit_line(g, 4, "2" + g[1:1568].decode()), "value '2'"),
    "value_10": (".amat", lambda g: edit_line(g, 4, "10" + g[1:1568].decode()), "value '10'"),
    "empty": (".amat", lambda g: b"\n \n", "no images"),
}


@pytest.mark.parametrize("kind", AMAT_CORRUPTIONS)
def test_binarized_mnist_corrupt(tmp_path, kind, small_sizes):
    suffix, corrupt, words = AMAT_CORRUPTIONS[kind]
    write_binarized(tmp_path, gz=False)
    good = tmp_path / "binarized_mnist_valid.amat"
    raw = corrupt(good.read_bytes())
    good.unlink()
    (tmp_path / f"binarized_mnist_valid{suffix}").write_bytes(raw)
    with pytest.raises(DataError) as excinfo:
        load_dataset("binarized_mnist", tmp_path, download=False)
    msg = one_line_error(excinfo)
    assert words in msg and "binarized_mnist_valid" in msg


@pytest.mark.parametrize(("sizes", "state"), [((20, 7, 3), "is cut short"), ((20, 9, 5), "holds more")])
def test_a_binarized_mnist_file_of_another_size_is_one_line_naming_it(sizes, state, tmp_path, small_sizes):
    write_binarized(tmp_path, gz=False, sizes=sizes)  # cut (or grown) at a line boundary: it parses
    split, n = next((s, n) for s, n, m in zip(SPLITS, sizes, (20, 7, 5), strict=True) if n != m)
    with pytest.raises(DataError) as excinfo:
        load_dataset("binarized_mnist", tmp_path, download=False)
    assert one_line_error(excinfo) == (
        f"binarized_mnist: {tmp_path / f'binarized_mnist_{split}.amat'} holds {n} images; the {split} split "
        f"has {bm_mod.SIZES[split]} (the pinned file, sha256 {bm_mod.AMAT_SHA256[split][:12]}...), so the "
        f"file {state}: replace it, or delete it to download it again")


def test_binarized_mnist_sizes_are_the_literatures():
    assert bm_mod.SIZES == {"train": 50_000, "valid": 10_000, "test": 10_000}


# ---------------------------------------------------------------- missing files
@pytest.mark.parametrize(("given", "env", "searched", "source", "hint"), [
    ("flag", None, "flag", "the folder --data-dir names", "pass the --data-dir that holds them"),
    ("flag", "env", "flag", "the folder --data-dir names", "pass the --data-dir that holds them"),
    (None, "env", "env", "the folder $DVAE_DATA_DIR names",
     "set DVAE_DATA_DIR, or pass --data-dir, to the folder that holds them"),
    (None, None, "cache/discrete-vae", "the user cache, searched without --data-dir or $DVAE_DATA_DIR",
     "pass --data-dir DIR or set DVAE_DATA_DIR"),
])
def test_missing_files_say_which_folder_was_searched(given, env, searched, source, hint, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DVAE_DATA_DIR", raising=False)
    if env:
        monkeypatch.setenv("DVAE_DATA_DIR", str(tmp_path / env))
    with pytest.raises(MissingDataError) as excinfo:
        load_dataset("binarized_mnist", tmp_path / given if given else None, download=False)
    msg = one_line_error(excinfo)
    folder = tmp_path / searched
    assert f"files not found in {folder / 'binarized_mnist'} or {folder}, {source} (expected " in msg
    assert "binarized_mnist_train.amat[.gz]" in msg and "binarized_mnist_test.amat[.gz]" in msg
    assert msg.endswith(f"download disabled; {hint}")


# ---------------------------------------------------------------- mnist / fashion_mnist (IDX)
def grey_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads_with_dynamic_binarization(tmp_path, monkeypatch, name, gz):
    monkeypatch.setattr(idx_mod, "VALID_SIZE", 10)
    train, test = grey_images(100, 0), grey_images(30, 1)
    ext = ".gz" if gz else ""
    write(tmp_path / name / f"train-images-idx3-ubyte{ext}", idx_bytes(train))
    write(tmp_path / f"t10k-images-idx3-ubyte{ext}", idx_bytes(test))  # directly in data_dir
    data = load_dataset(name, tmp_path, download=False, seed=3)
    assert data.dynamic_binarization and data.image_shape == (28, 28)
    assert [data.split(s).shape[0] for s in SPLITS] == [90, 10, 30]
    expected = torch.from_numpy(train[:90].reshape(90, 784) / 255.0).float()
    assert torch.allclose(data.train, expected)
    assert torch.allclose(data.train_mean, expected.mean(0))
    for split in ("valid", "test"):
        assert set(data.split(split).unique().tolist()) == {0.0, 1.0}
    again = load_dataset(name, tmp_path, download=False, seed=3)
    other = load_dataset(name, tmp_path, download=False, seed=4)
    assert torch.equal(again.valid, data.valid) and torch.equal(again.test, data.test)
    assert not torch.equal(other.test, data.test)
    assert abs(data.test.mean().item() - test.mean() / 255.0) < 0.02  # 23,520 draws, ~6 sigma


IDX_CORRUPTIONS = {  # name: (file suffix, good bytes -> bad bytes, words in the error)
    "bad_magic": ("", lambda g: b"\0\0\x08\x01" + g[4:], "magic number 0x00000801"),
    "truncated": ("", lambda g: g[:-100], "is truncated"),
    "too_long": ("", lambda g: g + b"\0", "longer than its header says"),
    "short_header": ("", lambda g: g[:10], "header needs 16"),
    "wrong_size": ("", lambda g: idx_bytes(np.zeros((100, 10, 10), np.uint8)), "(28, 28)"),
    "truncated_gz": (".gz", lambda g: gzip.compress(g)[:-50], "cannot read"),
}


@pytest.mark.parametrize("kind", IDX_CORRUPTIONS)
def test_idx_corrupt(tmp_path, monkeypatch, kind):
    suffix, corrupt, words = IDX_CORRUPTIONS[kind]
    monkeypatch.setattr(idx_mod, "VALID_SIZE", 10)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(grey_images(30, 1)))
    raw = corrupt(idx_bytes(grey_images(100, 0)))
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(raw)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path, download=False)
    msg = one_line_error(excinfo)
    assert words in msg and "train-images-idx3-ubyte" in msg


def test_idx_too_few_images_for_validation(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(grey_images(100, 0)))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(grey_images(30, 1)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path, download=False)
    assert "5000 held out" in one_line_error(excinfo)


# ---------------------------------------------------------------- omniglot (chardata.mat)
def write_chardata(path: Path, train: np.ndarray, test: np.ndarray, **extra) -> None:
    """IWAE layout: one column per image, each image's pixels in column-major order."""
    mats = {
        "data": np.stack([im.ravel(order="F") for im in train], axis=1),  # (784, n)
        "testdata": np.stack([im.ravel(order="F") for im in test], axis=1),
    }
    mats.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {k: v for k, v in mats.items() if v is not None})


def test_omniglot_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot_mod, "VALID_SIZE", 5)
    rng = np.random.default_rng(0)
    train, test = rng.random((40, 28, 28)), rng.random((12, 28, 28))
    write_chardata(tmp_path / "omniglot" / "chardata.mat", train, test)
    data = load_dataset("omniglot", tmp_path, download=False)
    assert data.dynamic_binarization and data.image_shape == (28, 28)
    assert [data.split(s).shape[0] for s in SPLITS] == [35, 5, 12]
    expected = torch.from_numpy(train[:35].reshape(35, 784)).float()  # row-major images
    assert torch.allclose(data.train, expected)
    assert set(data.test.unique().tolist()) <= {0.0, 1.0}


MAT_CORRUPTIONS = {  # name: (keyword arguments of write_chardata, words in the error)
    "no_testdata": ({"testdata": None}, "no variable 'testdata'"),
    "wrong_shape": ({"data": np.ones((100, 40))}, "has shape (100, 40)"),
    "out_of_range": ({"data": np.full((784, 40), 2.0)}, "outside [0, 1]"),
    "garbage": (None, "cannot read"),
}


@pytest.mark.parametrize("kind", MAT_CORRUPTIONS)
def test_omniglot_corrupt(tmp_path, monkeypatch, kind):
    extra, words = MAT_CORRUPTIONS[kind]
    monkeypatch.setattr(omniglot_mod, "VALID_SIZE", 5)
    path = tmp_path / "chardata.mat"
    if extra is None:
        path.write_bytes(b"this is not a MATLAB file\n" * 10)
    else:
        write_chardata(path, np.zeros((40, 28, 28)), np.zeros((12, 28, 28)), **extra)
    with pytest.raises(DataError) as excinfo:
        load_dataset("omniglot", tmp_path, download=False)
    msg = one_line_error(excinfo)
    assert words in msg and "chardata.mat" in msg


# ---------------------------------------------------------------- digits and DataSplits
def test_digits_fixed_binary_split(tmp_path):
    data = load_dataset("digits", tmp_path / "unused", download=False, seed=0)
    assert [data.split(s).shape for s in SPLITS] == [(1437, 64), (180, 64), (180, 64)]
    assert data.image_shape == (8, 8) and not data.dynamic_binarization
    assert set(torch.cat([data.train, data.valid, data.test]).unique().tolist()) == {0.0, 1.0}
    other = load_dataset("digits", tmp_path / "unused", download=False, seed=7)
    assert all(torch.equal(data.split(s), other.split(s)) for s in SPLITS)


def test_datasplits_helpers():
    x = torch.rand(6, 4)
    data = DataSplits("toy", x, x[:2].round(), x[:3].round(), (2, 2), True)
    assert data.dim == 4 and torch.allclose(data.train_mean, x.mean(0))
    assert data.to("cpu").train is not None and "toy" in repr(data)
    with pytest.raises(DataError) as excinfo:
        data.split("validation")
    assert "train, valid, test" in one_line_error(excinfo)
    with pytest.raises(DataError):
        DataSplits("toy", x, x, torch.rand(3, 5), (2, 2), False)


def test_subset_is_fixed_spread_nested_and_in_file_order():
    x = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 4)  # row i holds i
    data = DataSplits("toy", x, x, x, (2, 2), False)
    assert data.subset("test") is x and data.subset("test", 1000) is x and data.subset("test", 5000) is x
    small, large = data.subset("test", 100)[:, 0], data.subset("valid", 400)[:, 0]
    assert small.shape == (100,) and bool((small.diff() > 0).all())  # distinct rows, file order
    assert set(small.tolist()) <= set(large.tolist())  # nested: the first N of one permutation
    assert torch.equal(small, data.subset("train", 100)[:, 0])  # the same rows for every split
    # spread over the split, not a prefix: every block of 100 rows holds some of the 100 (about 10)
    counts = torch.bincount((small // 100).long(), minlength=10)
    assert int(counts.min()) >= 1 and int(counts.max()) <= 19


# ---------------------------------------------------------------- BatchIterator
def indexed_data(n: int, d: int = 3) -> torch.Tensor:
    """Row i is (i, i, ..., i): a batch's first column names its rows."""
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, d)


def reference_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))


def test_batches_are_slices_of_each_epochs_permutation():
    n, b = 100, 8
    it = BatchIterator(indexed_data(n), b, seed=5)
    assert it.steps_per_epoch == 12
    epochs = []
    for epoch in range(3):
        assert it.epoch == epoch
        perm = reference_perm(n, 5, epoch)
        rows = []
        for step in range(it.steps_per_epoch):
            batch = it.next()
            assert batch.shape == (b, 3) and batch.dtype == torch.float32
            assert torch.equal(batch[:, 0].long(), perm[step * b : (step + 1) * b])
            rows.append(batch[:, 0].long())
        seen = torch.cat(rows)
        assert len(set(seen.tolist())) == 96  # each sample at most once, 4 dropped
        epochs.append(seen)
    assert it.epoch == 3
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_every_sample_once_without_drop_last_and_unshuffled_order():
    it = BatchIterator(indexed_data(10), 4, seed=0, drop_last=False)
    sizes, seen = [], []
    for _ in range(it.steps_per_epoch):
        batch = it.next()
        sizes.append(batch.shape[0])
        seen += batch[:, 0].long().tolist()
    assert sizes == [4, 4, 2] and sorted(seen) == list(range(10)) and it.epoch == 1
    plain = BatchIterator(indexed_data(10), 5, seed=0, shuffle=False)
    order = torch.cat([plain.next()[:, 0] for _ in range(3)]).long().tolist()
    assert order == list(range(10)) + list(range(5))


@pytest.mark.parametrize("dynamic", [False, True])
def test_resume_mid_epoch_is_bitwise_exact(dynamic):
    data = torch.rand(50, 6) if dynamic else indexed_data(50, 6)
    it = BatchIterator(data, 7, seed=11, dynamic_binarization=dynamic)  # 7 steps per epoch
    for _ in range(10):
        it.next()
    state = it.state_dict()
    assert state == {"epoch": 1, "position": 21, "seed": 11}
    assert all(type(v) is int for v in state.values())
    expected = [it.next() for _ in range(12)]  # crosses into epoch 3
    resumed = BatchIterator(data, 7, seed=0, dynamic_binarization=dynamic)
    resumed.load_state_dict(state)
    for batch in expected:
        assert torch.equal(resumed.next(), batch)
    assert resumed.state_dict() == it.state_dict()


def test_dynamic_binarization_draws_fresh_bits():
    grey = torch.rand(64, 256, generator=torch.Generator().manual_seed(0))
    it = BatchIterator(grey, 64, seed=1, dynamic_binarization=True, shuffle=False)
    first, second = it.next(), it.next()  # the same 64 images, epochs 0 and 1
    assert set(first.unique().tolist()) == {0.0, 1.0}
    # 16,384 Bernoulli draws: the mean's standard deviation is <= 0.004; 0.025 is > 6 sigma.
    assert abs(first.mean().item() - grey.mean().item()) < 0.025
    assert abs((first - grey).mean(0)).max().item() < 0.5  # per-pixel means over 64 draws
    assert not torch.equal(first, second)
    assert (first != second).float().mean().item() > 0.3


@pytest.mark.parametrize("n", [100, 101])
def test_ranks_see_disjoint_shards_of_one_permutation(n):
    data = indexed_data(n)
    ranks = [BatchIterator(data, 10, seed=3, rank=r, world_size=2) for r in range(2)]
    assert [r.steps_per_epoch for r in ranks] == [5, 5]
    seen = [torch.cat([r.next()[:, 0].long() for _ in range(5)]) for r in ranks]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    perm = reference_perm(n, 3, 0)[:100]
    assert torch.equal(seen[0], perm[0::2]) and torch.equal(seen[1], perm[1::2])


def test_batch_iterator_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        BatchIterator(indexed_data(5), 8, seed=0)
    with pytest.raises(ConfigError):
        BatchIterator(indexed_data(50), 8, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError):
        BatchIterator(torch.zeros(5), 1, seed=0)
    it = BatchIterator(indexed_data(50), 8, seed=0)
    with pytest.raises(ConfigError):
        it.load_state_dict({"epoch": 0, "position": 3})
    with pytest.raises(ConfigError):
        it.load_state_dict({"epoch": 0, "position": 51, "seed": 0})


# ---------------------------------------------------------------- the real shared files
@pytest.mark.skipif(
    not (SHARED_DATA / "binarized_mnist").is_dir(),
    reason=f"shared binarized MNIST not present at {SHARED_DATA / 'binarized_mnist'}",
)
def test_real_binarized_mnist():
    data = load_dataset("binarized_mnist", SHARED_DATA, download=False)
    sizes = [data.split(s).shape for s in SPLITS]
    assert sizes == [(50000, 784), (10000, 784), (10000, 784)]
    for split, mean in zip(SPLITS, (0.1306, 0.1311, 0.1325), strict=True):
        assert abs(data.split(split).mean().item() - mean) < 0.0005
