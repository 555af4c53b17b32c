"""An on-disk cache of computed features, one ``.npy`` file per key.

Keys come from :func:`make_key`: a sha256 over the clip's identity
(:meth:`Dataset.identity <bitsound.data.records.Dataset.identity>`), the audio and front-end
configuration and :data:`FORMAT_VERSION`. Any change to one of them gives a new key, so nothing
is ever invalidated in place; stale entries are simply no longer asked for.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``), so a reader sees
either no file or a complete one, and concurrent writers of the same key are harmless: both
write the same content and the last rename wins. A file that is damaged anyway (disk full,
copied partially, edited by hand) is detected on read, removed with a logged warning and
recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import tokenize
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bitsound.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bump when the meaning of cached arrays changes (front-end code, array layout).
FORMAT_VERSION = 1
#: Environment variable that overrides the default cache folder.
CACHE_ENV = "BITSOUND_CACHE"
_TMP_SUFFIX = ".tmp"


def default_cache_root() -> Path:
    """``$BITSOUND_CACHE`` when set, else ``~/.cache/bitsound/features``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bitsound" / "features"


def make_key(identity: str, config: Mapping[str, Any] | Any, *,
             version: int = FORMAT_VERSION) -> str:
    """Hash a clip identity and a configuration into a cache key.

    Parameters
    ----------
    identity : str
        ``dataset.identity(clip)``.
    config : mapping or pydantic model
        Everything that affects the features (audio config, front-end config ...). It is dumped
        as canonical JSON (sorted keys, no whitespace), so key order does not matter.
    version : int
        Format version, :data:`FORMAT_VERSION` by default.

    Returns
    -------
    str
        64 hexadecimal characters.

    Raises
    ------
    ConfigError
        ``config`` holds something JSON cannot represent.
    """
    if hasattr(config, "model_dump"):  # pydantic sections of bitsound.config
        config = config.model_dump(mode="json")
    payload = {"identity": identity, "config": config, "version": version}
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot build a cache key: the config is not plain JSON ({exc}); pass str/int/float/"
            "bool/None/list/dict values (e.g. str() paths, finite numbers)"
        ) from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Feature arrays on disk, keyed by :func:`make_key`.

    Parameters
    ----------
    root : Path or str, optional
        Cache folder (created on first write). Defaults to :func:`default_cache_root`.

    Notes
    -----
    Files live at ``root/<key[:2]>/<key>.npy`` so no folder grows past a few thousand entries.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """Where the array of ``key`` is stored."""
        _check_key(key)
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached array, memory-mapped read-only, or None when absent or damaged.

        A damaged file is removed (with a warning) so the next :meth:`put` replaces it.

        Raises
        ------
        DataError
            The file exists but cannot be read (permissions, an I/O error).
        """
        path = self.path_for(key)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(array, np.ndarray):  # a whole .npz archive: not a file this cache writes
                array.close()
                raise ValueError("an .npz archive, not an .npy array")
            problem = _size_problem(path, array)
        except FileNotFoundError:  # absent, or removed by another process in between
            return None
        except OSError as exc:  # permissions, I/O errors, too many open files: not the file's fault
            raise DataError(f"feature cache file '{path}' cannot be read ({exc.strerror or exc}); "
                            "check its permissions and the disk, or pass --cache DIR with another "
                            "folder (or --no-cache)") from None
        except _DAMAGED as exc:
            self._discard(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if problem:
            self._discard(path, problem)
            return None
        return array

    def put(self, key: str, array: np.ndarray) -> np.ndarray:
        """Store ``array`` atomically and return the stored copy, memory-mapped read-only.

        Raises
        ------
        TypeError
            ``array`` has an object dtype (it could not be memory-mapped back).
        DataError
            The cache folder cannot be written (full, read-only), or the file written cannot be
            read back.
        """
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise TypeError(f"cannot cache an array of dtype {array.dtype}; use a numeric dtype")
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(path, array)
        except OSError as exc:  # disk full, read-only or missing mount: say where and what to do
            raise DataError(f"cannot write to the feature cache '{self.root}' ({exc.strerror or exc});"
                            " free space there, pass --cache DIR with a writable folder, or --no-cache"
                            ) from None
        stored = self.get(key)
        if stored is None:  # another process removed or damaged it in between, or the disk fails
            raise DataError(f"feature cache file '{path}' could not be read back after writing it "
                            "(removed or damaged at once: another program cleaning the cache, or a "
                            "failing disk); rerun, check the disk, or pass --cache DIR with another "
                            "folder (or --no-cache)")
        return stored

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``, computing and storing it first when needed."""
        cached = self.get(key)
        if cached is not None:
            return cached
        return self.put(key, compute())

    def __contains__(self, key: str) -> bool:
        """A complete, readable array is cached under ``key`` (:meth:`get`: a damaged file is
        removed and does not count, so it is computed again)."""
        return self.get(key) is not None

    def _discard(self, path: Path, problem: str) -> None:
        log.warning("feature cache: '%s' is %s; removing it and recomputing", path, problem)
        # Another process may have removed or replaced it first.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


#: What numpy raises for a damaged ``.npy`` file (found by fuzzing its header and bytes): a bad
#: magic string, header or dtype (parsed with ast and, for old headers, tokenize), a shape larger
#: than the file, EOF.
# np.load reads a file that starts like a zip archive as an .npz: a damaged cache file can too
_DAMAGED = (ValueError, TypeError, SyntaxError, tokenize.TokenError, EOFError, OverflowError,
            IndexError, KeyError, zipfile.BadZipFile)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or len(key) < 3 or not key.isalnum():
        raise ConfigError(
            f"cache key {key!r} must be an alphanumeric string of 3+ characters; build it with "
            "bitsound.data.cache.make_key(identity, config)"
        )


def _size_problem(path: Path, array: np.memmap) -> str | None:
    """A problem when the file is not exactly header + data (truncated or padded)."""
    expected = int(getattr(array, "offset", 0)) + array.nbytes
    actual = path.stat().st_size
    if actual != expected:
        return f"{actual} bytes long instead of {expected} (truncated or damaged)"
    return None


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` via a synced temporary file and an atomic rename."""
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=_TMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no partial temporary file behind, whatever interrupted the write.
        Path(tmp_name).unlink(missing_ok=True)
        raise
