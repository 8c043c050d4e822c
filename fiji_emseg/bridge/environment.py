"""What a Fiji needs to run the commands, checked from its jars (install) or from inside it (each run).

The facts behind the rules (FIELD_NOTES §2, §2b):

- ImageJ 1.x: the commands use only ImageJ1 APIs that 1.53f (Fiji 2.3.0) already has; older
  releases are refused with what to update.
- CPython "Python mode" needs the scripting-python engine (Fiji 2.18+ brings it with the Jaunch
  launcher); without it Fiji cannot run the ``.py`` commands in CPython at all.
- Jython also claims ``.py``, at a higher priority; only scijava-common 2.100+ honours the
  commands' ``#@script(language="Python")``. Jython next to an older scijava-common sends the
  commands to Jython, where they fail.

:func:`check_fiji_folder` reads jar file names (no JVM needed) for ``emseg fiji install``;
:func:`check_command_environment` asks the running JVM, once per process, at each command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ..errors import EmsegError

__all__ = [
    "MIN_IJ1",
    "MIN_SCIJAVA_LANGUAGE_KEY",
    "FijiEnvironmentError",
    "Finding",
    "check_command_environment",
    "check_fiji_folder",
    "ij1_version_ok",
    "parse_version",
]

#: Oldest ImageJ 1.x the commands support (Fiji 2.3.0 ships 1.53f).
MIN_IJ1 = "1.53f"
#: First scijava-common that honours ``#@script(language=…)``.
MIN_SCIJAVA_LANGUAGE_KEY = "2.100.0"
_UPDATE = "update Fiji (Help > Update..., or a new download of Fiji 2.18+ from https://fiji.sc)"


class FijiEnvironmentError(EmsegError):
    """This Fiji cannot run the commands; the message says what to update."""


@dataclass(frozen=True)
class Finding:
    """One line of an environment check: ``ok``, ``warning`` (works, with a caveat) or ``error``."""

    level: Literal["ok", "warning", "error"]
    text: str

    def __str__(self) -> str:
        return f"{self.level.upper() if self.level != 'ok' else 'ok'}: {self.text}"


def parse_version(text: str) -> tuple[int | str, ...]:
    """'1.53f' -> (1, 53, 'f'); '2.99.0' -> (2, 99, 0); '2.0.2-SNAPSHOT' -> (2, 0, 2). Comparable tuples."""
    m = re.match(r"^\s*(\d+(?:\.\d+)*)([a-z]?)", str(text))
    if not m:
        return ()
    parts: list[int | str] = [int(p) for p in m.group(1).split(".")]
    if m.group(2) or parts[:1] == [1]:  # ImageJ 1.x: the letter is the last component ('' < 'a')
        parts.append(m.group(2))
    return tuple(parts)


def _less(a: str, b: str) -> bool:
    return parse_version(a) < parse_version(b)  # type: ignore[operator]


def ij1_version_ok(version: str) -> bool:
    """Whether ImageJ ``version`` (e.g. '1.54p') is at least :data:`MIN_IJ1`."""
    return bool(parse_version(version)) and not _less(version, MIN_IJ1)


def _jar_version(jars: Path, stem: str) -> str | None:
    """The version in the name of ``jars/<stem>-<version>.jar`` (the highest, if several)."""
    found = []
    for path in jars.glob(f"{stem}-[0-9]*.jar"):
        version = path.name[len(stem) + 1:-4]
        if parse_version(version):
            found.append(version)
    return max(found, key=parse_version) if found else None


def check_fiji_folder(fiji: Path) -> list[Finding]:
    """What this Fiji.app's jars say about running the commands (one finding per requirement)."""
    jars = fiji / "jars"
    found: list[Finding] = []
    ij1 = _jar_version(jars, "ij")
    if ij1 is None:
        found.append(Finding("error", f"no ImageJ 1.x jar (jars/ij-*.jar) in {fiji}; {_UPDATE}"))
    elif not ij1_version_ok(ij1):
        found.append(Finding("error", f"ImageJ {ij1} is older than {MIN_IJ1}, the oldest the commands support; "
                                      f"{_UPDATE}, or Help > Update ImageJ..."))
    else:
        found.append(Finding("ok", f"ImageJ {ij1}"))
    ij2 = _jar_version(jars, "imagej")
    found.append(Finding("ok", f"ImageJ2 {ij2}") if ij2 else
                 Finding("error", f"no ImageJ2 (jars/imagej-2*.jar), which Python mode needs; {_UPDATE}"))
    scijava = _jar_version(jars, "scijava-common")
    python_mode = _jar_version(jars, "scripting-python") is not None
    jython = bool(list(jars.glob("jython*.jar")) or list(jars.glob("scripting-jython-*.jar")))
    found.append(Finding("ok", f"scijava-common {scijava}") if scijava else
                 Finding("error", f"no scijava-common jar in {jars}; {_UPDATE}"))
    found.append(Finding("ok", "Python mode engine (scripting-python)") if python_mode else
                 Finding("error", f"no Python mode (jars/scripting-python-*.jar): the CPython commands cannot run; "
                                  f"{_UPDATE}, then Edit > Options > Python..."))
    if scijava and _less(scijava, MIN_SCIJAVA_LANGUAGE_KEY):
        if jython:
            found.append(Finding("error", f"Jython is installed and scijava-common {scijava} (< "
                                          f"{MIN_SCIJAVA_LANGUAGE_KEY}) ignores the commands' #@script(language="
                                          f"\"Python\"), so Jython would run them and fail; {_UPDATE}"))
        else:
            found.append(Finding("warning", f"scijava-common {scijava} ignores #@script(language=\"Python\"); the "
                                            "commands run in CPython only while no Jython is installed (a later "
                                            f"Jython install would take them over); {_UPDATE} to be safe"))
    elif jython:
        found.append(Finding("ok", f"Jython present; scijava-common {scijava} sends the commands to CPython"))
    return found


@lru_cache(maxsize=1)
def _running_versions() -> tuple[str, str | None]:
    """(ImageJ 1.x version, scijava-common version or None without ImageJ2) of the running JVM."""
    from .jvm import has_imagej2, jclass

    ij1 = str(jclass("ij.IJ").getVersion())
    scijava = None
    if has_imagej2():
        scijava = str(jclass("org.scijava.util.VersionUtils").getVersion(jclass("org.scijava.Context")))
    return ij1, scijava


def check_command_environment(title: str) -> None:
    """Refuse to run in an ImageJ too old for the commands, naming what to update (cheap after the first call)."""
    ij1, _ = _running_versions()
    if not ij1_version_ok(ij1):
        raise FijiEnvironmentError(f"{title} needs ImageJ {MIN_IJ1} or later, this is ImageJ {ij1}; {_UPDATE}, "
                                   "or Help > Update ImageJ...")
