"""What ``emseg fiji install`` and each command check about a Fiji, and the one slice numbering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from emseg_testdata import blob_sample
from imagej2_runtime import SHARED_FIJI, imagej2_available

from fiji_emseg.bridge.commands import _check_validation
from fiji_emseg.bridge.environment import (
    check_fiji_folder,
    ij1_version_ok,
    parse_version,
)
from fiji_emseg.cli.main import main
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.training.trainer import split_validation_slices
from fiji_emseg.errors import InputDataError


def fiji_with(root: Path, *jars: str) -> Path:
    app = root / "Fiji.app"
    (app / "jars").mkdir(parents=True)
    (app / "scripts").mkdir()
    for jar in jars:
        (app / "jars" / jar).write_bytes(b"")
    return app


def levels(findings: list) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ok": [], "warning": [], "error": []}
    for f in findings:
        out[f.level].append(f.text)
    return out


def test_versions_compare_as_imagej_numbers_them() -> None:
    assert parse_version("1.53f") < parse_version("1.53t") < parse_version("1.54p")
    assert parse_version("1.53") < parse_version("1.53f")
    assert parse_version("2.99.0") < parse_version("2.100.0")
    assert parse_version("2.0.2-SNAPSHOT") == (2, 0, 2)
    assert ij1_version_ok("1.53f") and ij1_version_ok("1.54p") and not ij1_version_ok("1.52p")


@pytest.mark.skipif(not imagej2_available(), reason="no real ImageJ2 in ../shared/imagej2")
def test_the_tested_runtime_passes_with_a_warning_about_jython() -> None:
    found = levels(check_fiji_folder(SHARED_FIJI))
    assert found["error"] == []
    assert "ImageJ 1.54p" in found["ok"] and "ImageJ2 2.16.0" in found["ok"]
    assert len(found["warning"]) == 1 and "scijava-common 2.99.0 ignores" in found["warning"][0]


def test_an_old_fiji_with_jython_and_no_python_mode_is_told_what_to_update(tmp_path: Path) -> None:
    app = fiji_with(tmp_path, "ij-1.53f.jar", "imagej-2.3.0.jar", "scijava-common-2.87.1.jar",
                    "jython-slim-2.7.2.jar", "scripting-jython-1.0.0.jar")
    found = levels(check_fiji_folder(app))
    assert "ImageJ 1.53f" in found["ok"]  # old, but every ImageJ1 API the commands use is there
    assert any("no Python mode" in e and "Fiji 2.18+" in e for e in found["error"]), found
    assert any("Jython would run them" in e and "scijava-common 2.87.1" in e for e in found["error"]), found


def test_a_too_old_imagej_is_an_error(tmp_path: Path) -> None:
    app = fiji_with(tmp_path, "ij-1.52p.jar", "imagej-2.0.0.jar", "scijava-common-2.100.1.jar",
                    "scripting-python-0.5.0.jar")
    found = levels(check_fiji_folder(app))
    assert found["error"] == [("ImageJ 1.52p is older than 1.53f, the oldest the commands support; update Fiji "
                              "(Help > Update..., or a new download of Fiji 2.18+ from https://fiji.sc), "
                              "or Help > Update ImageJ...")]
    assert found["warning"] == []  # scijava-common 2.100 honours #@script(language="Python")


def test_install_prints_the_findings_and_says_when_fiji_is_not_ready(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    app = fiji_with(tmp_path, "ij-1.54f.jar", "imagej-2.16.0.jar", "scijava-common-2.99.0.jar")
    assert main(["fiji", "install", "--fiji", str(app)]) == 0  # the copy itself succeeded
    out = capsys.readouterr().out
    assert "  ok: ImageJ 1.54f" in out
    assert "  ERROR: no Python mode (jars/scripting-python-*.jar)" in out
    assert "NOT READY" in out


def test_fiji_messages_number_slices_from_1_and_the_engine_from_0() -> None:
    sample = blob_sample((8, 32, 32))
    annotated = np.zeros(sample.shape, dtype=bool)
    annotated[:4] = True  # the user annotated slices 1-4
    sample = Sample(sample.name, sample.image, sample.masks, sample.class_names, None, annotated)
    with pytest.raises(InputDataError) as fiji:
        _check_validation(sample, [6, 7], "7-8", "1-4")  # what Train EM Model got from a user typing 7-8
    assert str(fiji.value) == ("validation slices 7-8 (from 1) hold no annotated slice; choose them among the "
                               "annotated slices 1-4")
    with pytest.raises(InputDataError) as cli:
        split_validation_slices([sample], "6-7")  # emseg train --val-slices 6-7: 0-based, as on the command line
    assert "validation slices '6-7'" in str(cli.value)
