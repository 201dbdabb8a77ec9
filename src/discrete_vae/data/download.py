"""Finding a dataset's files, and downloading the missing ones from their canonical address.

Downloads go to ``data_dir/<dataset>/`` through a temporary file and ``os.replace``, so an
interrupted download never leaves a half-written file under the final name.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from .base import find_file, one_line

TIMEOUT_S = 30.0


def fetch_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically; raises ``OSError``/``URLError`` on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "discrete-vae"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return one_line(error.reason) or "network unreachable"
    return one_line(error) or type(error).__name__


def locate_files(
    dataset: str, data_dir: Path, files: dict[str, str], download: bool
) -> dict[str, Path]:
    """Paths of the dataset's files, downloading the missing ones when ``download`` is True.

    ``files`` maps each expected file name (looked for as is and with ``.gz``, in
    ``data_dir/dataset`` then ``data_dir``) to the address it is downloaded from; the file is
    saved under the address's base name. Missing files without a download raise a one-line
    :class:`DataError` naming the folder, the files, and how to point elsewhere.
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
    where = f"{dataset}: files not found in {folder} or {data_dir} (expected {expected})"
    hint = "pass --data-dir DIR or set DVAE_DATA_DIR"
    if not download:
        raise DataError(f"{where}; download disabled; {hint}")
    for name in missing:
        url = files[name]
        dest = folder / url.rsplit("/", 1)[-1]
        try:
            fetch_url(url, dest)
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts are OSErrors
            raise DataError(f"{where}; download of {url} failed ({_reason(e)}); {hint}") from e
        found[name] = dest
    return found
