"""``emseg fiji``: install the Fiji commands into a Fiji.app, or start Fiji in Python mode.

The commands are CPython scripts (``fiji_scripts/*.py``, shipped as ``fiji_emseg.fiji_scripts``).
Fiji finds scripts in ``Fiji.app/scripts/``; ``scripts/Plugins/EM_Segmentation/Train_EM_Model.py``
becomes Plugins > EM Segmentation > Train EM Model. They only run when Fiji is in Python mode
and its Python environment has fiji-emseg installed, which ``install`` explains.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..bridge.environment import check_fiji_folder
from ..bridge.imagej2_start import START_RACE_ISSUE, is_start_race
from ..errors import EmsegError

__all__ = ["INSTALL_SUBDIR", "InstallAction", "find_fiji", "install_scripts", "launch_fiji", "python_mode_help",
           "register", "script_sources"]

#: Where the commands go inside Fiji.app (the folder name gives the menu: Plugins > EM Segmentation).
INSTALL_SUBDIR = Path("scripts") / "Plugins" / "EM_Segmentation"
_FIJI_HOME_ENV = "FIJI_HOME"

DESCRIPTION = """\
install: copy the Fiji commands (Train EM Model, Predict EM Model, Evaluate EM Segmentation,
Measure EM Objects, Package EM Model) into FIJI/scripts/Plugins/EM_Segmentation/, where they appear under
Plugins > EM Segmentation, and print how to switch Fiji to Python mode and which packages its
Python environment needs. An existing, different copy is only replaced with --overwrite.

launch: start Fiji in Python mode from this Python environment through pyimagej (for users who
work from Python; this environment must have fiji-emseg, which it has).

examples:
  emseg fiji install --fiji ~/Fiji.app
  emseg fiji install --fiji ~/Fiji.app --overwrite     # after upgrading fiji-emseg
  emseg fiji launch --fiji ~/Fiji.app
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fiji", help="install the Fiji commands into Fiji, or start Fiji in Python mode",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="fiji_action", metavar="ACTION", required=True)
    i = actions.add_parser("install", help="copy the commands into Fiji.app/scripts/Plugins/EM_Segmentation")
    i.add_argument("--fiji", metavar="PATH", default=os.environ.get(_FIJI_HOME_ENV),
                   help=f"the Fiji.app folder (default: ${_FIJI_HOME_ENV})")
    i.add_argument("--overwrite", action="store_true", help="replace installed commands that differ from this version")
    i.set_defaults(func=run_install)
    la = actions.add_parser("launch", help="start Fiji in Python mode through pyimagej")
    la.add_argument("--fiji", metavar="PATH", default=os.environ.get(_FIJI_HOME_ENV),
                    help=f"the Fiji.app folder (default: ${_FIJI_HOME_ENV})")
    la.set_defaults(func=run_launch)


# -- finding things -------------------------------------------------------------------------------

def find_fiji(path: str | os.PathLike[str] | None, need_imagej2: bool = False) -> Path:
    """The Fiji.app folder at ``path`` (a launcher inside it also works), or a one-line error."""
    if not path:
        raise EmsegError(f"no Fiji given; pass --fiji PATH/Fiji.app or set {_FIJI_HOME_ENV}")
    fiji = Path(path).expanduser()
    if fiji.is_file():  # the launcher, e.g. Fiji.app/fiji-linux-x64
        fiji = fiji.parent
    if not fiji.is_dir():
        raise EmsegError(f"{fiji} does not exist; give the Fiji.app folder, e.g. --fiji ~/Fiji.app")
    jars = fiji / "jars"
    if not jars.is_dir() or not (list(jars.glob("ij-*.jar")) or (jars / "ij.jar").is_file()):
        raise EmsegError(f"{fiji} is not a Fiji installation (no jars/ij-*.jar); give the Fiji.app folder, "
                         "e.g. --fiji ~/Fiji.app (download Fiji from https://fiji.sc)")
    if need_imagej2 and not list(jars.glob("imagej-[0-9]*.jar")):
        raise EmsegError(f"{fiji} has no ImageJ2 (no jars/imagej-2*.jar), which Python mode needs; "
                         "use a current Fiji from https://fiji.sc, or update this one (Help > Update...)")
    return fiji


def script_sources() -> dict[str, bytes]:
    """The Fiji commands (file name -> content) that belong to the running fiji_emseg code.

    Imported from a source checkout, that checkout's ``fiji_scripts/`` (an editable install
    elsewhere maps ``fiji_emseg.fiji_scripts`` to its own checkout, whose commands may differ from
    the code running); installed from a wheel, the package's ``fiji_emseg.fiji_scripts``.
    """
    folder: Any
    checkout = _source_checkout()
    if checkout is not None:
        entries = list((checkout / "fiji_scripts").iterdir())
    else:
        try:
            from importlib.resources import files

            folder = files("fiji_emseg.fiji_scripts")
            entries = list(folder.iterdir())
        except ModuleNotFoundError:
            entries = []
    scripts = {e.name: e.read_bytes() for e in entries
               if e.name.endswith(".py") and not e.name.startswith(("_", ".")) and e.is_file()}
    if not scripts:
        raise EmsegError("the Fiji commands are missing from this fiji-emseg installation; reinstall it "
                         "(pip install --force-reinstall fiji-emseg)")
    return dict(sorted(scripts.items()))


def _launcher(fiji: Path) -> str:
    """The command that starts this Fiji (Jaunch 'fiji-<platform>' or the older 'ImageJ-<platform>')."""
    for pattern in ("fiji", "fiji-*", "ImageJ-*", "Contents/MacOS/fiji*", "Contents/MacOS/ImageJ*"):
        for candidate in sorted(fiji.glob(pattern)):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return str(fiji / "fiji")


def _fiji_python(fiji: Path) -> Path | None:
    """The Python of Fiji's Python-mode environment (Fiji.app/python/<platform>), when it exists."""
    for pattern in ("python/*/bin/python3", "python/*/bin/python", "python/*/python.exe"):
        found = sorted(fiji.glob(pattern))
        if found:
            return found[0]
    return None


def _source_checkout() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "fiji_scripts").is_dir() else None


# -- install ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstallAction:
    path: Path
    action: str  # "new", "updated", "unchanged"


def install_scripts(fiji: str | os.PathLike[str] | None, overwrite: bool = False) -> list[InstallAction]:
    """Copy the commands into ``Fiji.app/scripts/Plugins/EM_Segmentation/``.

    Every target is checked before anything is written: a different existing file is an error
    unless ``overwrite``. Each file is written to a temporary name and renamed, so Fiji never
    sees a half-written script.
    """
    from ..engine.data.files import atomic_write_bytes

    root = find_fiji(fiji)
    target = root / INSTALL_SUBDIR
    if target.exists() and not target.is_dir():
        raise EmsegError(f"{target} is a file; remove it, then install again")
    plan: list[tuple[Path, bytes, str]] = []
    conflicts: list[str] = []
    for name, content in script_sources().items():
        path = target / name
        if not path.exists():
            plan.append((path, content, "new"))
        elif path.read_bytes() == content:
            plan.append((path, content, "unchanged"))
        else:
            plan.append((path, content, "updated"))
            conflicts.append(name)
    if conflicts and not overwrite:
        raise EmsegError(f"{target} already holds different {', '.join(conflicts)} (another version of fiji-emseg, "
                         "or edited by hand); pass --overwrite to replace them")
    for path, content, action in plan:
        if action != "unchanged":
            atomic_write_bytes(path, content, overwrite=True)
    return [InstallAction(path, action) for path, _, action in plan]


def python_mode_help(fiji: Path) -> str:
    """How to switch this Fiji to Python mode and give its Python environment fiji-emseg."""
    python = _fiji_python(fiji)
    py = f'"{python}"' if python else f'"{fiji / "python" / "<platform>" / "bin" / "python"}"'
    lines = [
        "The commands are CPython scripts: Fiji must run in Python mode, with fiji-emseg in its Python.",
        "  1. In Fiji: Edit > Options > Python... : add the line  fiji-emseg  to 'Pip dependencies',",
        "     click 'Build Python environment', tick 'Launch in Python mode', press OK and restart Fiji.",
        f"     (Or start it in Python mode once from a terminal:  {_launcher(fiji)} --python)",
        "  2. Or install the packages into Fiji's Python environment yourself (fiji-emseg brings its",
        "     dependencies: torch, onnxruntime, numpy, tifffile, scikit-image, pandas, pyimagej, ...):",
        f"       {py} -m pip install \"fiji-emseg=={__version__}\"",
    ]
    checkout = _source_checkout()
    if checkout is not None:
        lines.append(f"     from this source checkout instead:  {py} -m pip install \"{checkout}\"")
    if python is None:
        lines.append(f"     ({fiji / 'python'} does not exist yet: step 1 creates it; on Windows the Python is "
                     "python\\<platform>\\python.exe)")
    lines.append("  Without Python mode (or in an old Fiji) the commands fail with an ImportError "
                 "(No module named fiji_emseg).")
    return "\n".join(lines)


def run_install(args: argparse.Namespace) -> int:
    actions = install_scripts(args.fiji, overwrite=args.overwrite)
    fiji = find_fiji(args.fiji)
    print(f"fiji-emseg {__version__}: {len(actions)} commands in {fiji / INSTALL_SUBDIR}")
    for a in actions:
        print(f"  {a.path.name:<30} {a.action}")
    print("They appear under Plugins > EM Segmentation after Fiji starts (or Help > Refresh Menus).\n")
    findings = check_fiji_folder(fiji)
    print("What this Fiji has (tested: ImageJ2 2.16 / ImageJ 1.54p; Python mode needs Fiji 2.18+):")
    for finding in findings:
        print(f"  {finding}")
    print()
    print(python_mode_help(fiji))
    errors = [f for f in findings if f.level == "error"]
    if errors:  # the copy itself succeeded (exit 0); the user updates Fiji and the commands work
        print(f"\nNOT READY: the commands are installed, but this Fiji cannot run them until the {len(errors)} "
              "ERROR line(s) above are fixed.")
    return 0


# -- launch ----------------------------------------------------------------------------------------

def launch_fiji(fiji: str | os.PathLike[str] | None, poll_s: float = 0.5) -> int:
    """Start Fiji in Python mode through pyimagej and wait until its window is closed."""
    root = find_fiji(fiji, need_imagej2=True)
    try:
        import imagej  # type: ignore[import-untyped]  # lazily: importing it adds a Maven endpoint
    except ImportError as exc:
        raise EmsegError(f"pyimagej is not installed in this Python ({exc}); pip install pyimagej, "
                         "or start Fiji itself with --python") from exc
    mode = "gui" if sys.platform == "darwin" else "interactive"  # macOS: AWT needs the main thread
    print(f"starting {root} in Python mode (pyimagej {getattr(imagej, '__version__', '?')}, {mode})…", file=sys.stderr)
    try:
        ij = imagej.init(str(root), mode=mode)
    except Exception as exc:  # pyimagej raises plain exceptions of many kinds
        if is_start_race(exc):
            raise EmsegError(f"Fiji did not start this time: SciJava's start-up race ({exc}; {START_RACE_ISSUE}); "
                             "it is intermittent, not a fault of this Fiji: run the same command again") from exc
        raise EmsegError(f"pyimagej could not start Fiji from {root} ({type(exc).__name__}: {exc}); check that it "
                         "is a complete, updated Fiji and that Java 11+ is installed") from exc
    if mode == "gui":
        return 0  # imagej.init returned because Fiji was closed
    ij.ui().showUI()
    try:
        while bool(ij.ui().isVisible()):
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the JVM is shutting down: Fiji was closed
        return 0
    return 0


def run_launch(args: argparse.Namespace) -> int:
    return launch_fiji(args.fiji)
