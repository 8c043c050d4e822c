"""Atomic, non-clobbering file output.

Outputs are written to a temporary file in the destination folder and moved into place with
``os.replace`` only once complete, so an interrupted run or a full disk never leaves a
half-written file under the user's chosen name. Existing files are only replaced when the
caller says so explicitly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "describe_os_error",
]


def _default_file_mode() -> int:
    """Permissions a normally created file gets (0o666 minus the umask); mkstemp uses 0o600."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


_FILE_MODE = _default_file_mode()


def describe_os_error(exc: OSError, path: Path) -> str:
    """One line that names the problem with *path* and the fix."""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full while writing {path}; free some space or choose another output folder"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}; free some space or choose another output folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {path}; choose a folder you can write to"
    return f"cannot write {path}: {exc.strerror or exc}"


def check_writable(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Fail early, before any work, if *path* exists and may not be replaced."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another name or pass overwrite=True (--overwrite)")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder, not a file; choose a file name")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside *path*; move it onto *path* only if the block succeeds.

    The temporary name keeps the final suffix so libraries that infer the format from the
    extension (tifffile, h5py, onnx) behave as for the real name.
    """
    path = check_writable(path, overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=parent)
        with contextlib.suppress(OSError):
            os.fchmod(fd, _FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        if path.exists() and not overwrite:  # appeared while we were working
            raise OutputError(f"{path} was created by someone else meanwhile; nothing was overwritten")
        _fsync_file(tmp)
        with contextlib.suppress(OSError):  # some writers (safetensors) recreate the file as 0600
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(parent)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(describe_os_error(exc, path)) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, overwrite: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", overwrite)


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
