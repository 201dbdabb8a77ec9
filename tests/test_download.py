"""Tests of the download path against a loopback HTTP server: sources in order, pins, atomicity.

Each server test serves small files it writes itself from ``http.server`` on 127.0.0.1 (port 0)
and points the binarized MNIST sources and pins at them; the others patch ``fetch_url``. Nothing
leaves the machine. The last test checks the pinned sums against the real files where present.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import sys
import threading
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from discrete_vae.data import binarized_mnist as bm_mod
from discrete_vae.data import download as download_mod
from discrete_vae.data import idx as idx_mod
from discrete_vae.data import load_dataset
from discrete_vae.data import omniglot as omniglot_mod
from discrete_vae.data.base import find_file, read_bytes
from discrete_vae.errors import DataError

SPLITS = ("train", "valid", "test")
SIZES = {"train": 6, "valid": 3, "test": 2}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def amat_text(bits: np.ndarray, sep: str = " ", end: str = "\n") -> bytes:
    """A reference ``.amat`` writer, independent of the package's encoder."""
    return "".join(sep.join(map(str, row)) + end for row in bits).encode()


def mat_bytes(x: np.ndarray, name: str = "X") -> bytes:
    """A MATLAB 5 file laid out as the pinned copy: one compressed variable ``X``, (n, 784). The header's
    116 bytes of text (where savemat writes the time, to the second) are fixed, so that the bytes pinned
    and the bytes served are the same even when a second passes between the two calls."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, {name: x}, format="5", do_compression=True)
    return b"MATLAB 5.0 MAT-file, written by the download tests".ljust(116) + buf.getvalue()[116:]


IMAGES = {s: (np.random.default_rng(i).random((n, 784)) < 0.3).astype(np.uint8)
          for i, (s, n) in enumerate(SIZES.items())}  # split: (n, 784) 0/1


# ---------------------------------------------------------------- the loopback server
@dataclass
class Reply:
    """What the server answers for one path: a body, or a status, or a cut-short transfer."""

    body: bytes = b""
    status: int = 200
    send: int | None = None  # bytes sent before the connection is closed; None: all of them
    chunked: bool = False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.server.requests.append(self.path)
        reply = self.server.routes.get(self.path, Reply(status=404))
        body = reply.body if reply.status == 200 else b""
        self.send_response(reply.status)
        self.send_header("Connection", "close")
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = body if reply.send is None else body[: reply.send]
        if reply.chunked:  # one chunk announced whole, then cut
            self.wfile.write(f"{len(body):x}\r\n".encode() + sent)
            if reply.send is None:
                self.wfile.write(b"\r\n0\r\n\r\n")
        else:
            self.wfile.write(sent)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    base: str
    routes: dict[str, Reply]
    requests: list[str]


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes, httpd.requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def pinned(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Binarized MNIST's sources on the loopback server, pinned to :data:`IMAGES`."""
    monkeypatch.setattr(bm_mod, "CANONICAL_URL", f"{server.base}/canonical/binarized_mnist_{{}}.amat")
    monkeypatch.setattr(bm_mod, "MIRROR_URL", f"{server.base}/mirror/binarized_mnist_{{}}.amat")
    monkeypatch.setattr(bm_mod, "AMAT_SHA256", {s: sha256(amat_text(IMAGES[s])) for s in SPLITS})
    monkeypatch.setattr(bm_mod, "MIRROR_SHA256", {s: sha256(mat_bytes(IMAGES[s])) for s in SPLITS})
    monkeypatch.setattr(bm_mod, "SIZES", {s: IMAGES[s].shape[0] for s in SPLITS})
    return server


def serve(server: Server, source: str, make: object = None, **reply: object) -> None:
    """Serve every split at ``/<source>/``: its canonical text, its MATLAB copy, or ``make``."""
    make = make or (amat_text if source == "canonical" else mat_bytes)
    for s in SPLITS:
        server.routes[f"/{source}/binarized_mnist_{s}.amat"] = Reply(make(IMAGES[s]), **reply)


def assert_loaded(root: Path) -> None:
    """The cache holds exactly the three canonical files, and they load as :data:`IMAGES`."""
    folder = root / "binarized_mnist"
    assert sorted(p.name for p in folder.iterdir()) == [f"binarized_mnist_{s}.amat" for s in sorted(SPLITS)]
    for s in SPLITS:
        assert (folder / f"binarized_mnist_{s}.amat").read_bytes() == amat_text(IMAGES[s])
    data = load_dataset("binarized_mnist", root, download=False)
    for s in SPLITS:
        assert torch.equal(data.split(s), torch.from_numpy(IMAGES[s].astype(np.float32)))


def requested(server: Server, source: str) -> list[str]:
    return [p.rsplit("_", 1)[-1][:-5] for p in server.requests if p.startswith(f"/{source}/")]


# ---------------------------------------------------------------- sources in order
def test_canonical_source_first(pinned, tmp_path, capsys):
    serve(pinned, "canonical")
    serve(pinned, "mirror")
    load_dataset("binarized_mnist", tmp_path, download=True)
    assert requested(pinned, "canonical") == list(SPLITS) and requested(pinned, "mirror") == []
    assert_loaded(tmp_path)
    err = capsys.readouterr().err  # stderr is no terminal here: one short line a download
    assert err.count("downloading http://127.0.0.1") == 3 and len(err.splitlines()) == 3


def test_canonical_text_in_another_layout_is_saved_canonically(pinned, tmp_path):
    serve(pinned, "canonical", make=lambda bits: amat_text(bits, sep="  ", end=" \r\n"))
    load_dataset("binarized_mnist", tmp_path, download=True)
    assert_loaded(tmp_path)


def test_404_then_the_matlab_mirror(pinned, tmp_path):
    serve(pinned, "mirror")  # nothing at /canonical/: 404
    load_dataset("binarized_mnist", tmp_path, download=True)
    assert requested(pinned, "canonical") == list(SPLITS) == requested(pinned, "mirror")
    assert_loaded(tmp_path)


@pytest.mark.parametrize("first", ["canonical", "mirror"])
def test_wrong_checksum_moves_on(pinned, tmp_path, first):
    other = "mirror" if first == "canonical" else "canonical"
    wrong = {"canonical": lambda b: amat_text(1 - b), "mirror": lambda b: mat_bytes(b[::-1])}
    serve(pinned, first, make=wrong[first])  # well-formed files with other images
    serve(pinned, other)
    order = 1 if first == "canonical" else -1  # the mirror is last in the package: swap here
    for s in SPLITS:
        remote = bm_mod.remote(s)
        swapped = download_mod.Remote(remote.filename, remote.sources[::order], remote.sha256)
        download_mod.download(swapped, tmp_path / "binarized_mnist")
    assert requested(pinned, "canonical") == list(SPLITS) == requested(pinned, "mirror")
    assert_loaded(tmp_path)


@pytest.mark.parametrize("chunked", [False, True], ids=["short_of_content_length", "closed_mid_chunk"])
def test_truncated_transfer_moves_on_and_leaves_nothing(pinned, tmp_path, chunked):
    serve(pinned, "canonical", send=1000, chunked=chunked)
    remote = bm_mod.remote("train")
    with pytest.raises(DataError) as excinfo:
        download_mod.download(download_mod.Remote(remote.filename, remote.sources[:1], remote.sha256),
                              tmp_path)
    assert remote.sources[0].url in str(excinfo.value) and list(tmp_path.iterdir()) == []
    serve(pinned, "mirror")
    load_dataset("binarized_mnist", tmp_path, download=True)
    assert_loaded(tmp_path)


def test_all_sources_fail_in_one_line(pinned, tmp_path):
    serve(pinned, "mirror", status=500)
    with pytest.raises(DataError) as excinfo:
        load_dataset("binarized_mnist", tmp_path, download=True)
    msg = str(excinfo.value)
    canonical, mirror = (bm_mod.CANONICAL_URL.format("train"), bm_mod.MIRROR_URL.format("train"))
    assert "\n" not in msg and f"{canonical} (HTTP 404), {mirror} (HTTP 500)" in msg
    assert "binarized_mnist_train.amat" in msg and "--data-dir" in msg
    assert list((tmp_path / "binarized_mnist").iterdir()) == []
    assert requested(pinned, "canonical") == ["train"]  # the first file fails, the rest wait


def test_a_file_of_the_source_pin_but_not_the_file_pin_is_refused(pinned, tmp_path, monkeypatch):
    wrong = mat_bytes(1 - IMAGES["train"])
    monkeypatch.setitem(bm_mod.MIRROR_SHA256, "train", sha256(wrong))
    pinned.routes["/mirror/binarized_mnist_train.amat"] = Reply(wrong)
    with pytest.raises(DataError) as excinfo:
        load_dataset("binarized_mnist", tmp_path, download=True)
    assert "sha256 mismatch" in str(excinfo.value)
    assert list((tmp_path / "binarized_mnist").iterdir()) == []


def test_progress_bar_on_a_terminal(pinned, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    serve(pinned, "canonical")
    download_mod.download(bm_mod.remote("test"), tmp_path)
    bar = term.getvalue()
    assert "binarized_mnist_test.amat:" in bar and "3.06k" in bar and "B/s" in bar  # 3,136 bytes
    assert "downloading" not in bar  # the bar instead of the short line


def test_unchecked_single_address_as_before(server, tmp_path):
    server.routes["/f/t10k-images-idx3-ubyte.gz"] = Reply(b"payload")
    paths = download_mod.locate_files(
        "mnist", tmp_path, {"t10k-images-idx3-ubyte": f"{server.base}/f/t10k-images-idx3-ubyte.gz"}, True
    )
    assert paths["t10k-images-idx3-ubyte"] == tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert os.listdir(tmp_path / "mnist") == ["t10k-images-idx3-ubyte.gz"]
    assert paths["t10k-images-idx3-ubyte"].read_bytes() == b"payload"


# ---------------------------------------------------------------- with fetch_url patched
SOURCES = {  # dataset: the addresses its first missing file is downloaded from, in order
    "mnist": [f"{idx_mod.URLS['mnist']}train-images-idx3-ubyte.gz"],
    "fashion_mnist": [f"{idx_mod.URLS['fashion_mnist']}train-images-idx3-ubyte.gz"],
    "omniglot": [omniglot_mod.URL],
    "binarized_mnist": [s.url for s in bm_mod.remote("train").sources],
}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "omniglot", "binarized_mnist"])
def test_download_failure_is_one_line(tmp_path, monkeypatch, name):
    tried = []

    def offline(url: str, dest: Path, timeout: float = 30.0) -> None:
        tried.append(url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset(name, tmp_path, download=True)
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and msg == msg.strip()
    assert tried == SOURCES[name]  # each source of the first file once, then stop
    assert all(f"{url} (" in msg for url in tried)
    assert msg.count("Network is unreachable") == len(tried)
    assert str(tmp_path / name) in msg and "--data-dir" in msg
    assert [p.name for p in (tmp_path / name).iterdir()] == []  # no temporary file left


def test_download_saves_into_dataset_folder(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    for s in SPLITS:
        (source / f"binarized_mnist_{s}.amat").write_bytes(amat_text(IMAGES[s]))
    monkeypatch.setattr(bm_mod, "AMAT_SHA256", {s: sha256(amat_text(IMAGES[s])) for s in SPLITS})
    monkeypatch.setattr(bm_mod, "SIZES", {s: IMAGES[s].shape[0] for s in SPLITS})
    fetched = []

    def fake_fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
        fetched.append((url, dest))
        dest.write_bytes((source / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(download_mod, "fetch_url", fake_fetch)
    root = tmp_path / "cache"
    load_dataset("binarized_mnist", root, download=True)
    assert [url for url, _ in fetched] == [bm_mod.CANONICAL_URL.format(s) for s in SPLITS]
    assert all(url.startswith("https://www.cs.toronto.edu/~larocheh/") for url, _ in fetched)
    assert all(dest.parent == root / "binarized_mnist" for _, dest in fetched)
    assert_loaded(root)


def test_fetch_url_is_atomic(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    download_mod.fetch_url(source.as_uri(), dest)  # file:// - no network
    assert dest.read_bytes() == b"payload"
    with pytest.raises(urllib.error.URLError):
        download_mod.fetch_url((tmp_path / "absent").as_uri(), tmp_path / "out" / "x.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin"]


# ---------------------------------------------------------------- conversions
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])  # the stored type, and MATLAB's class
def test_matlab_copy_converts_to_the_canonical_text(dtype):
    bits = IMAGES["train"]
    assert bm_mod.mat_to_amat(mat_bytes(bits.astype(dtype))) == amat_text(bits)
    assert bm_mod.encode_amat(bits) == amat_text(bits)
    assert bm_mod.canonical_amat(amat_text(bits, sep="\t", end="\n\n")) == amat_text(bits)


MAT_CORRUPTIONS = {  # name: (bytes, words in the error)
    "transposed": (mat_bytes(IMAGES["train"].T), "has shape (784, 6)"),
    "value_2": (mat_bytes(2 * IMAGES["train"]), "other than 0 and 1"),
    "no_X": (mat_bytes(IMAGES["train"], name="Y"), "has shape (0, 0)"),
    "v7.3": (b"MATLAB 7.3 MAT-file".ljust(124) + b"\x00\x02IM" + bytes(512), "v7.3 (HDF5)"),
    "garbage": (b"not a MATLAB file\n" * 20, "cannot read"),
}


@pytest.mark.parametrize("kind", MAT_CORRUPTIONS)
def test_bad_matlab_copies_are_one_line_errors(kind):
    raw, words = MAT_CORRUPTIONS[kind]
    with pytest.raises(DataError) as excinfo:
        bm_mod.mat_to_amat(raw, "copy.mat")
    msg = str(excinfo.value)
    assert words in msg and "copy.mat" in msg and "\n" not in msg


# ---------------------------------------------------------------- the pins and the real files
def real_data_dir() -> Path | None:
    for root in (os.environ.get("DVAE_DATA_DIR"), SHARED_DATA):
        if root and all(find_file(Path(root), "binarized_mnist", f"binarized_mnist_{s}.amat")
                        for s in SPLITS):
            return Path(root)
    return None


@pytest.mark.skipif(real_data_dir() is None, reason="real binarized MNIST not present")
@pytest.mark.parametrize("split", SPLITS)
def test_pinned_sums_match_the_real_files(split):
    path = find_file(real_data_dir(), "binarized_mnist", f"binarized_mnist_{split}.amat")
    raw = read_bytes(path, "binarized_mnist")
    assert sha256(raw) == bm_mod.AMAT_SHA256[split]  # the canonical text, uncompressed
    assert bm_mod.canonical_amat(raw) == raw
    if path.suffix == ".gz" and SHARED_DATA in path.parents:  # the known gzip copy
        assert download_mod.sha256_file(path) == bm_mod.AMAT_GZ_SHA256[split]
