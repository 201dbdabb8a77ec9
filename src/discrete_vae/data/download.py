"""Finding a dataset's files, and downloading the missing ones from their sources, in order.

A file that can be downloaded is a :class:`Remote`: the name it is saved under, the sha256 sums
its contents may have, and its :class:`Source` addresses. Each source in turn is streamed into a
temporary file in ``data_dir/<dataset>/`` (progress on stderr), checked against the source's own
sum, converted when the source serves another format, checked against the file's sums, and only
then written under the final name (``fsync``, then ``os.replace``). A source that fails (network
or HTTP error, short transfer, sum mismatch, unreadable contents) hands over to the next; when
all fail, one :class:`DataError` line names each source and why it failed. Nothing half-written
ever carries the final name, and no temporary file outlives a download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import atomic_write_bytes
from ..errors import DataError, MissingDataError
from .base import data_dir_source, find_file, one_line

TIMEOUT_S = 30.0
CHUNK = 1 << 16

Convert = Callable[[bytes, str], bytes]  # (bytes served, their name) -> the file's contents


@dataclass(frozen=True)
class Source:
    """One address a file is downloaded from.

    - ``url``: the address, https where the host serves it.
    - ``sha256``: the pinned sum of the bytes served; None where no sum is known.
    - ``convert``: turns the bytes served into the file's contents (a copy in another format),
      or None when the bytes served are the file itself.
    """

    url: str
    sha256: str | None = None
    convert: Convert | None = None


@dataclass(frozen=True)
class Remote:
    """A file to download: the name it is saved under, its sources in order, its accepted sums.

    ``sha256`` lists the sums the saved contents may have; empty means unchecked.
    """

    filename: str
    sources: tuple[Source, ...]
    sha256: tuple[str, ...] = ()


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(digest: str, pinned: tuple[str, ...]) -> None:
    if pinned and digest not in pinned:
        pins = " or ".join(f"{p[:12]}..." for p in pinned)
        raise DataError(f"sha256 mismatch: got {digest[:12]}..., pinned {pins}")


def _temp_path(folder: Path, name: str, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


def fetch_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically, with progress on stderr.

    A bar when stderr is a terminal, else one short line. Raises ``OSError`` (``URLError``,
    timeouts, a transfer shorter than its ``Content-Length``) or ``http.client.HTTPException``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dest.parent, dest.name, ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "discrete-vae"})
        with open(tmp, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if not sys.stderr.isatty():
                size = f" ({total / 1e6:.1f} MB)" if total is not None else ""
                print(f"downloading {url}{size}", file=sys.stderr, flush=True)
            received = 0
            with tqdm(total=total, disable=None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=url.rsplit("/", 1)[-1], leave=False, dynamic_ncols=True) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise ConnectionError(f"transfer cut short: {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return one_line(error.reason) or "network unreachable"
    return one_line(error) or type(error).__name__


def _from_source(source: Source, remote: Remote, dest: Path) -> None:
    """Save ``remote`` at ``dest`` from ``source``; raises if the source fails in any way."""
    part = _temp_path(dest.parent, dest.name, ".download")
    try:
        fetch_url(source.url, part)
        if source.sha256 is not None:
            _check(sha256_file(part), (source.sha256,))
        if source.convert is None:
            _check(sha256_file(part), remote.sha256)
            os.replace(part, dest)  # fetch_url has synced it
            return
        data = source.convert(part.read_bytes(), source.url.rsplit("/", 1)[-1])
        _check(hashlib.sha256(data).hexdigest(), remote.sha256)
        atomic_write_bytes(dest, data)
    finally:
        part.unlink(missing_ok=True)


def download(remote: Remote, folder: Path) -> Path:
    """``folder/remote.filename``, from the first source that gives the pinned contents.

    Raises a :class:`DataError` naming every source and why it failed when none does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    failures = []
    for source in remote.sources:
        try:
            _from_source(source, remote, dest)
            return dest
        except (OSError, http.client.HTTPException, DataError) as e:  # URLError, timeouts: OSError
            failures.append(f"{source.url} ({_reason(e)})")
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # it holds the response
    raise DataError(f"download of {remote.filename} failed: {', '.join(failures)}")


def locate_files(
    dataset: str, data_dir: Path, files: dict[str, str | Remote], download_missing: bool
) -> dict[str, Path]:
    """Paths of the dataset's files, downloading the missing ones when ``download_missing``.

    ``files`` maps each expected file name (looked for as is and with ``.gz``, in
    ``data_dir/dataset`` then ``data_dir``) to a :class:`Remote`, or to one address whose base
    name the file is saved under, unchecked. Missing files without a download, or whose download
    fails, raise a one-line :class:`DataError` naming the folder, the files, the sources tried,
    and how to point elsewhere.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in files:
        path = find_file(data_dir, dataset, name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if not missing:
        return found
    folder = data_dir / dataset
    expected = ", ".join(f"{name}[.gz]" for name in missing)
    source, hint = data_dir_source(data_dir)
    where = f"{dataset}: files not found in {folder} or {data_dir}, {source} (expected {expected})"
    if not download_missing:
        raise MissingDataError(f"{where}; download disabled; {hint}")
    for name in missing:
        remote = files[name]
        if isinstance(remote, str):
            remote = Remote(remote.rsplit("/", 1)[-1], (Source(remote),))
        try:
            found[name] = download(remote, folder)
        except DataError as e:
            raise MissingDataError(f"{where}; {e}; {hint}") from e
    return found
