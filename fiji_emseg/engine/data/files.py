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
import re
import shutil
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
    "ensure_folder",
    "describe_os_error",
    "remove_stale_temporaries",
    "announce_removed",
    "temporary_folder",
    "PART_MARK",
]

#: Every temporary file we write is named ``.<stem>.<pid>-<random>.part<suffix>``: hidden, tied
#: to the process that writes it, and findable by the next run into the same folder.
PART_MARK = ".part"
_PART_RE = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.part(\.[A-Za-z0-9]+)*$")
_TMPDIR_RE = re.compile(r"^\.emseg-[a-z]+-(\d+)-[A-Za-z0-9_]+$")  # temporary folders (mask memmaps)
_OLD_PART_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.[A-Za-z0-9]+)*$")  # before the pid was in the name


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


def _disk_nearly_full(path: Path) -> bool:
    for folder in (path.parent, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < (1 << 20)
    return False


def describe_os_error(exc: OSError, path: Path) -> str:
    """One line that names the problem with *path* and the fix.

    Short writes surface without an errno ("16384 requested and 11168 written" from numpy), so a
    nearly empty file system is recognised from its free space too.
    """
    if exc.errno == errno.ENOSPC or (exc.errno is None and _disk_nearly_full(path)):
        return (f"the disk is full while writing {path}; free some space or choose an output folder "
                "on another disk (nothing was kept under that name)")
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}; free some space or choose another output folder"
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system; choose an output folder on a writable disk"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}; choose a folder you can write to"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None and blocker != path:
            return f"{blocker} is a file where a folder is needed for {path}; give another output folder"
        return f"{path} already exists; choose another name, or remove it"
    if exc.errno == errno.EISDIR:
        return f"{path} is a folder, not a file; choose a file name"
    return f"cannot write {path}: {exc.strerror or exc}; check the disk and the folder"


def ensure_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create *path* as a folder (with parents), or say in one line why it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; give a folder name (it will be created)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from exc
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def temporary_folder(parent: str | os.PathLike[str], kind: str) -> Path:
    """A hidden scratch folder in *parent* that :func:`remove_stale_temporaries` recognises."""
    return Path(tempfile.mkdtemp(prefix=f".emseg-{kind}-{os.getpid()}-", dir=parent))


def announce_removed(removed: list[Path], folder: Path) -> None:
    """Tell the user (one warning line) what an earlier, interrupted run had left behind."""
    if not removed:
        return
    import warnings

    from ...errors import EmsegWarning

    names = ", ".join(f.name for f in removed[:3]) + (", …" if len(removed) > 3 else "")
    warnings.warn(f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted run ({names})",
                  EmsegWarning, stacklevel=3)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed runs left in *folder*; return what was removed.

    Only our own naming pattern is touched, and only files whose writing process no longer
    exists, so a second run writing into the same folder at the same time keeps its files.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for f in entries:
        d = _TMPDIR_RE.match(f.name)
        if d is not None and f.is_dir() and not _pid_alive(int(d.group(1))):
            shutil.rmtree(f, ignore_errors=True)
            if not f.exists():
                removed.append(f)
            continue
        if not f.name.startswith(".") or PART_MARK not in f.name:
            continue
        m = _PART_RE.match(f.name)
        stale = (m is not None and not _pid_alive(int(m.group(1)))) or (m is None and _OLD_PART_RE.match(f.name) is not None)
        if stale and f.is_file():
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


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
    ensure_folder(parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-", suffix=f"{PART_MARK}{path.suffix}", dir=parent)
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
