"""Tests of the download path: one-line errors, where files are saved, atomic writes.

No test touches the network: ``fetch_url`` is patched, or reads ``file://`` addresses.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from discrete_vae.data import download as download_mod
from discrete_vae.data import load_dataset
from discrete_vae.errors import DataError
from test_data import SPLITS, one_line_error, write, write_binarized


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "omniglot", "binarized_mnist"])
def test_download_failure_is_one_line(tmp_path, monkeypatch, name):
    def offline(url: str, dest: Path, timeout: float = 30.0) -> None:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset(name, tmp_path, download=True)
    msg = one_line_error(excinfo)
    assert "download of http" in msg and "Network is unreachable" in msg
    assert str(tmp_path / name) in msg and "--data-dir" in msg


def test_download_saves_into_dataset_folder(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_binarized(source, gz=False)
    fetched = []

    def fake_fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
        fetched.append((url, dest))
        write(dest, (source / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(download_mod, "fetch_url", fake_fetch)
    root = tmp_path / "cache"
    data = load_dataset("binarized_mnist", root, download=True)
    assert data.train.shape == (20, 784)
    assert [dest for _, dest in fetched] == [
        root / "binarized_mnist" / f"binarized_mnist_{s}.amat" for s in SPLITS
    ]
    assert all(url.startswith("http://www.cs.toronto.edu/~larocheh/") for url, _ in fetched)


def test_fetch_url_is_atomic(tmp_path):
    source = write(tmp_path / "src.bin", b"payload")
    dest = tmp_path / "out" / "file.bin"
    download_mod.fetch_url(source.as_uri(), dest)  # file:// - no network
    assert dest.read_bytes() == b"payload"
    with pytest.raises(urllib.error.URLError):
        download_mod.fetch_url((tmp_path / "absent").as_uri(), tmp_path / "out" / "x.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin"]
