"""``emseg fiji install`` / ``emseg fiji launch``, and the scripts shipped inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from bridge_fixtures import RACED_SERVICE, ij1, java_exception  # noqa: F401

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from fiji_emseg import __version__
from fiji_emseg.cli import fiji_cmd
from fiji_emseg.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "fiji_scripts").glob("[A-Z]*.py"))
TARGET = Path("scripts") / "Plugins" / "EM_Segmentation"


def fake_fiji(root: Path, imagej2: bool = False, python_env: bool = False) -> Path:
    """The parts of a Fiji.app layout that the commands look at (empty jars)."""
    app = root / "Fiji.app"
    (app / "jars").mkdir(parents=True)
    (app / "jars" / "ij-1.54f.jar").write_bytes(b"")
    (app / "scripts").mkdir()
    launcher = app / "fiji-linux-x64"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    if imagej2:
        (app / "jars" / "imagej-2.16.0.jar").write_bytes(b"")
    if python_env:
        py = app / "python" / "linux-x64" / "bin" / "python"
        py.parent.mkdir(parents=True)
        py.write_text("#!/bin/sh\n")
    return app


def emseg(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_five_commands_are_found_in_the_installed_package() -> None:
    sources = fiji_cmd.script_sources()
    assert list(sources) == SCRIPTS == ["Evaluate_EM_Segmentation.py", "Measure_EM_Objects.py",
                                        "Package_EM_Model.py", "Predict_EM_Model.py", "Train_EM_Model.py"]
    for name, content in sources.items():
        assert content == (REPO / "fiji_scripts" / name).read_bytes()  # __init__.py is not a command


def test_install_copies_the_commands_and_explains_python_mode(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    app = fake_fiji(tmp_path, python_env=True)
    code, out, _ = emseg("fiji", "install", "--fiji", str(app), capsys=capsys)
    assert code == 0
    installed = sorted(p.name for p in (app / TARGET).iterdir())
    assert installed == SCRIPTS  # no __init__.py, no temporary files
    for name in SCRIPTS:
        assert (app / TARGET / name).read_bytes() == (REPO / "fiji_scripts" / name).read_bytes()
        assert f"{name:<30} new" in out
    assert "Plugins > EM Segmentation" in out
    assert "Edit > Options > Python..." in out and "Launch in Python mode" in out
    assert f"{app / 'fiji-linux-x64'} --python" in out
    python = app / "python" / "linux-x64" / "bin" / "python"
    assert f'"{python}" -m pip install "fiji-emseg=={__version__}"' in out  # the exact command for this Fiji
    assert f'"{python}" -m pip install "{REPO}"' in out  # from this checkout


def test_install_again_keeps_identical_files_and_refuses_different_ones(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    app = fake_fiji(tmp_path)
    assert emseg("fiji", "install", "--fiji", str(app), capsys=capsys)[0] == 0
    code, out, _ = emseg("fiji", "install", "--fiji", str(app), capsys=capsys)
    assert code == 0 and out.count(" unchanged") == len(SCRIPTS) == 5
    assert f'"{app / "python" / "<platform>" / "bin" / "python"}" -m pip install' in out  # no env yet

    edited = app / TARGET / "Predict_EM_Model.py"
    edited.write_text(edited.read_text() + "# my change\n")
    untouched = app / TARGET / "Train_EM_Model.py"
    untouched.unlink()
    code, _, err = emseg("fiji", "install", "--fiji", str(app), capsys=capsys)
    assert code == 2
    assert "already holds different Predict_EM_Model.py" in err and "--overwrite" in err
    assert edited.read_text().endswith("# my change\n")  # kept
    assert not untouched.exists()  # and nothing else was written either: checked before any write

    code, out, _ = emseg("fiji", "install", "--fiji", str(app), "--overwrite", capsys=capsys)
    assert code == 0
    assert f"{'Predict_EM_Model.py':<30} updated" in out and f"{'Train_EM_Model.py':<30} new" in out
    assert edited.read_bytes() == (REPO / "fiji_scripts" / "Predict_EM_Model.py").read_bytes()


def test_install_refuses_what_is_not_a_fiji_installation(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = emseg("fiji", "install", "--fiji", str(tmp_path), capsys=capsys)
    assert code == 2 and f"{tmp_path} is not a Fiji installation (no jars/ij-*.jar)" in err
    code, _, err = emseg("fiji", "install", "--fiji", str(tmp_path / "nowhere"), capsys=capsys)
    assert code == 2 and "does not exist; give the Fiji.app folder" in err
    monkeypatch.delenv("FIJI_HOME", raising=False)
    code, _, err = emseg("fiji", "install", capsys=capsys)
    assert code == 2 and "no Fiji given; pass --fiji PATH/Fiji.app or set FIJI_HOME" in err
    app = fake_fiji(tmp_path / "home")
    monkeypatch.setenv("FIJI_HOME", str(app))  # the default when --fiji is left out
    assert emseg("fiji", "install", capsys=capsys)[0] == 0 and (app / TARGET / "Train_EM_Model.py").is_file()
    blocked = fake_fiji(tmp_path / "blocked")
    (blocked / "scripts" / "Plugins").mkdir()
    (blocked / TARGET).write_text("a file where the folder should be")
    code, _, err = emseg("fiji", "install", "--fiji", str(blocked), capsys=capsys)
    assert code == 2 and "is a file; remove it" in err


def test_launch_explains_what_is_missing_and_never_downloads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = emseg("fiji", "launch", "--fiji", str(tmp_path), capsys=capsys)
    assert code == 2 and "is not a Fiji installation" in err
    imagej1_only = fake_fiji(tmp_path / "old")
    code, _, err = emseg("fiji", "launch", "--fiji", str(imagej1_only), capsys=capsys)
    assert code == 2 and "has no ImageJ2 (no jars/imagej-2*.jar), which Python mode needs" in err
    app = fake_fiji(tmp_path / "new", imagej2=True)
    monkeypatch.setitem(sys.modules, "imagej", None)  # pyimagej not installed: its import fails
    code, _, err = emseg("fiji", "launch", "--fiji", str(app), capsys=capsys)
    assert code == 2 and "pyimagej is not installed in this Python" in err and "pip install pyimagej" in err


def test_launch_tells_a_start_race_from_a_broken_fiji(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, ij1: Any) -> None:  # noqa: F811
    """pyimagej's start raising SciJava's race says "run it again"; anything else says "check your Fiji"."""
    app = fake_fiji(tmp_path, imagej2=True)
    raised: list[Any] = []

    def init(*_args: Any, **_kwargs: Any) -> Any:
        raise raised[-1]

    monkeypatch.setitem(sys.modules, "imagej", types.SimpleNamespace(init=init, __version__="1.8.0"))
    invalid = "java.lang.IllegalArgumentException"
    raised.append(java_exception(invalid, RACED_SERVICE, java_exception("org.scijava.NullContextException")))
    code, _, err = emseg("fiji", "launch", "--fiji", str(app), capsys=capsys)
    assert code == 2 and "SciJava's start-up race" in err and "run the same command again" in err
    assert "scijava-common/issues/347" in err and "complete, updated Fiji" not in err
    raised.append(java_exception(invalid, "No match: net.imagej.legacy.LegacyService"))
    code, _, err = emseg("fiji", "launch", "--fiji", str(app), capsys=capsys)
    assert code == 2 and "complete, updated Fiji" in err and "start-up race" not in err


def test_packaging_lists_every_package_and_maps_the_scripts() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "fiji_emseg").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"fiji_emseg.fiji_scripts"}  # a new subpackage must be listed
    assert config["package-dir"] == {"fiji_emseg.fiji_scripts": "fiji_scripts"}
    assert config["package-data"]["fiji_emseg.fiji_scripts"] == ["*.py"]


def test_wheel_ships_the_commands_and_install_finds_them_there(tmp_path: Path) -> None:
    """Build a real wheel (from a copy of the sources), install it apart, run `emseg fiji install` from it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "fiji_emseg", src / "fiji_emseg", ignore=ignore)
    shutil.copytree(REPO / "fiji_scripts", src / "fiji_scripts", ignore=ignore)
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(wheels), "--no-deps",
                            "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("fiji_emseg-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fiji_emseg/fiji_scripts/{s}" for s in SCRIPTS} <= names
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300, check=False)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    app = fake_fiji(tmp_path / "fiji")
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import sys, fiji_emseg; from fiji_emseg.cli.main import main; "
            "print('FROM', fiji_emseg.__file__); sys.exit(main(['fiji', 'install', '--fiji', sys.argv[1]]))")
    run = subprocess.run([sys.executable, "-c", code, str(app)], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"FROM {site / 'fiji_emseg' / '__init__.py'}" in run.stdout  # really the wheel, not the checkout
    assert sorted(p.name for p in (app / TARGET).iterdir()) == SCRIPTS
    assert "from this source checkout" not in run.stdout  # an installed wheel has no checkout to point at
