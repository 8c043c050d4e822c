"""The Fiji Python-mode harness, exercised with throwaway scripts (the real ones come in phase 2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from bridge_fixtures import ij1, ij_log_capture, imagej_app, needs_display, wait_for  # noqa: F401
from fiji_harness import (
    HarnessError,
    parse_run_args,
    parse_script,
    run_headless,
    run_script,
)

from fiji_emseg.bridge.imageplus import numpy_to_imageplus
from fiji_emseg.bridge.jvm import jclass

pytestmark = pytest.mark.imagej

TINY = '''\
#@script(language="Python", menuPath="Plugins>EM Segmentation>Tiny Threshold")
#@ ImagePlus image
#@ Integer (label="Threshold", value=100) threshold
#@ Double (label="Rate", value=0.01) rate
#@ Float (value=0.01) rate_as_float
#@ Boolean (value=false) invert
#@ String (value="mito") class_name
#@ File (required=false) out_file
#@ StatusService status
#@ LogService log
#@output String result
#@output ImagePlus mask
#@output String types
#@output Boolean shown
from fiji_emseg.bridge.failure import report_failure
from fiji_emseg.bridge.imageplus import image_to_volume
from fiji_emseg.bridge.outputs import mask_title, mask_to_imageplus, show


def _run():
    # a function reading top-level names only works with ONE dict as globals and locals
    volume, cal = image_to_volume(image)
    fg = volume > int(threshold)
    if bool(invert):
        fg = ~fg
    status.showStatus(1, 1, "thresholded")
    log.info("threshold %d gave %d voxels" % (int(threshold), int(fg.sum())))
    out = mask_to_imageplus(fg, mask_title(str(image.getTitle()), str(class_name)), cal)
    return out, "ok %d %s %.2f" % (int(fg.sum()), str(class_name), float(rate)), show(out)


types = " ".join(type(v).__name__ for v in (threshold, rate, invert, class_name))
try:
    mask, result, shown = _run()
except Exception as exc:
    mask, result, shown = None, "error: " + report_failure(exc), False
'''


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "Tiny_Threshold.py"
    path.write_text(TINY, encoding="utf-8")
    return path


def _em(title: str = "em stack") -> object:
    a = np.zeros((3, 16, 20), np.uint16)
    a[:, 4:10, 5:15] = 500
    return numpy_to_imageplus(a, title)


def test_parse_directive_parameters_and_body(tiny: Path) -> None:
    info = parse_script(tiny)
    assert info.language == "Python"
    assert info.directives["menuPath"] == "Plugins>EM Segmentation>Tiny Threshold"
    assert [(p.type_name, p.name) for p in info.inputs][:3] == [("ImagePlus", "image"), ("Integer", "threshold"),
                                                                ("Double", "rate")]
    threshold = info.inputs[1]
    assert threshold.attrs == {"label": "Threshold", "value": 100}
    assert [p.name for p in info.outputs] == ["result", "mask", "types", "shown"]
    assert info.params[6].attrs == {"required": False}
    assert "#@" not in info.body and "def _run" in info.body


def test_attribute_and_argument_syntax() -> None:
    assert parse_run_args('image="/data/x y.tif",epochs=64,rate=1e-3,use_gpu=true,name=\'a,b\'') == {
        "image": "/data/x y.tif", "epochs": 64, "rate": 0.001, "use_gpu": True, "name": "a,b"}
    info = parse_script("x.py", text='#@script(language="Python")\n#@ String (choices={"a", "b c"}) pick\n'
                                     "#@output out\n#@BOTH ImagePlus imp\n#@ bogus\n")
    assert info.inputs[0].attrs == {"choices": ["a", "b c"]}
    assert (info.outputs[0].type_name, info.outputs[0].io) == ("Object", "OUTPUT")
    assert info.params[2].io == "BOTH"
    assert info.invalid_lines == ["#@ bogus"]


def test_run_gives_java_inputs_and_reads_outputs(ij1, tiny: Path) -> None:  # noqa: F811
    with ij_log_capture() as log:
        run = run_script(tiny, {"image": _em(), "threshold": 200, "class_name": "er"})
    assert run.ok, run.error
    assert run.outputs["result"] == "ok 180 er 0.01"
    assert run.outputs["types"] == "java.lang.Integer java.lang.Double java.lang.Boolean java.lang.String"
    mask = run.outputs["mask"]
    assert str(mask.getTitle()) == "em stack pred er" and mask.getBitDepth() == 8
    assert "threshold 200 gave 180 voxels" in log
    assert run.toplevel_arrays() == []  # only Java objects and strings are left at top level


def test_float_input_is_not_exact(ij1, tiny: Path) -> None:  # noqa: F811
    """Why learning rates must be declared Double (FIELD_NOTES §2)."""
    run = run_script(tiny, {"image": _em()})
    assert float(run.namespace["rate"]) == 0.01
    assert float(run.namespace["rate_as_float"]) != 0.01
    assert abs(float(run.namespace["rate_as_float"]) - 0.01) < 1e-9


def test_exceptions_are_swallowed_like_fiji(ij1, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "Crash.py"
    script.write_text('#@script(language="Python")\n#@ Integer n\n#@output String out\n'
                      'print("before %d" % int(n))\nout = "set"\nraise ValueError("boom")\n', encoding="utf-8")
    run = run_script(script, {"n": 3})
    assert not run.ok and "ValueError: boom" in (run.error or "")
    assert run.stdout == "before 3\n"
    assert run.outputs == {"out": "set"}  # what was assigned before the error still comes back


def test_last_expression_is_the_return_value(ij1, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "Ret.py"
    script.write_text('#@script(language="Python")\nimport numpy as np\nleft = np.zeros(3)\n6 * 7\n',
                      encoding="utf-8")
    run = run_script(script)
    assert run.return_value == 42
    assert run.toplevel_arrays() == ["left"]


def test_harness_rejects_what_fiji_would_not_run_as_cpython(ij1, tmp_path: Path, tiny: Path) -> None:  # noqa: F811
    spaced = tmp_path / "Spaced.py"
    spaced.write_text('#@ script(language="Python")\nx = 1\n', encoding="utf-8")
    with pytest.raises(HarnessError, match="Jython"):
        run_script(spaced)
    with pytest.raises(HarnessError, match="'image' \\(ImagePlus\\) was not given"):
        run_script(tiny, {}, autofill_image=False)
    with pytest.raises(HarnessError, match="no such input"):
        run_script(tiny, {"image": _em(), "epochs": 3})


@needs_display()
@pytest.mark.gui
def test_script_runs_on_the_open_image_window(imagej_app, tiny: Path) -> None:  # noqa: F811
    from fiji_emseg.bridge.outputs import show

    em = _em("open em")
    show(em)
    assert wait_for(lambda: jclass("ij.WindowManager").getCurrentImage() is not None)
    jclass("ij.WindowManager").setCurrentWindow(em.getWindow())
    assert wait_for(lambda: str(jclass("ij.WindowManager").getCurrentImage().getTitle()) == "open em")
    run = run_script(tiny, {"threshold": 100})  # no image given: the current image is used
    assert run.ok, run.error
    assert run.outputs["shown"] is True
    assert wait_for(lambda: jclass("ij.WindowManager").getImage("open em pred mito") is not None)
    for title in ("open em pred mito", "open em"):
        imp = jclass("ij.WindowManager").getImage(title)
        imp.changes = False
        imp.close()


def _save_tiff(imp: object, path: Path) -> Path:
    assert jclass("ij.IJ").saveAsTiff(imp, str(path))
    return path


def test_headless_batch_run_parses_arguments(ij1, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    tif = _save_tiff(_em("batch em"), tmp_path / "batch em.tif")
    proc = run_headless(tiny, f'image="{tif}",threshold=50,class_name="er 2",rate=0.5')
    assert proc.returncode == 0, proc.stderr
    assert "[output] result = ok 180 er 2 0.50" in proc.stdout
    assert "[output] shown = False" in proc.stdout  # headless: no window
    assert "threshold 50 gave 180 voxels" in proc.stdout  # IJ.log goes to stdout headless


def test_headless_failure_is_reported_and_exits_non_zero(ij1, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    rgb = jclass("ij.IJ").createImage("rgb", "RGB black", 8, 8, 1)
    tif = _save_tiff(rgb, tmp_path / "rgb.tif")
    proc = run_headless(tiny, f'image="{tif}"')
    assert proc.returncode == 1
    assert "ERROR: rgb.tif: RGB colour images are not supported" in proc.stdout  # the Log
    assert "Image > Type > 8-bit" in proc.stderr
    assert "[output]" not in proc.stdout  # the process ended in the script


def test_headless_unhandled_exception_still_exits_zero_like_fiji(ij1, tmp_path: Path) -> None:  # noqa: F811
    """The trap the real scripts must avoid: Fiji's runner swallows the error and exits 0."""
    script = tmp_path / "Unhandled.py"
    script.write_text(textwrap.dedent('''\
        #@script(language="Python")
        #@output String out
        raise RuntimeError("nobody catches me")
        '''), encoding="utf-8")
    proc = run_headless(script)
    assert proc.returncode == 0
    assert "RuntimeError: nobody catches me" in proc.stderr
    assert "[output] out = None" in proc.stdout


def test_gateway_stand_in_offers_status_and_log_only(ij1, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "Gateway.py"
    script.write_text(textwrap.dedent('''\
        #@script(language="Python")
        #@ ImageJ ij
        ij.status().showStatus(2, 4, "half way")
        ij.log().info("via the gateway")
        ij.op()
        '''), encoding="utf-8")
    with ij_log_capture() as log:
        run = run_script(script)
    assert "via the gateway" in log
    assert not run.ok and "no ImageJ2 gateway" in (run.error or "")
