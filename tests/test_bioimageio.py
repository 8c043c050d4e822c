"""bioimage.io packages: written with bioimageio.spec, passed by bioimageio.core, read back by our predictor.

Models are trained here for a few steps (2D sigmoid, 2D softmax, 3D), packaged with ``emseg
package`` and tested with bioimageio.core's own model test (every weight format, including the
reproduction of the test tensors). The round trip runs on a real crop of ../shared/data/vnc_sstem.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tifffile
from emseg_testdata import blob_sample
from ruyaml import YAML

from fiji_emseg.cli.main import main as cli
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import read_model_info
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.errors import ConfigError, InputDataError, ModelFileError
from fiji_emseg.export.bioimageio_package import DEEPIMAGEJ_IR_VERSION, DEEPIMAGEJ_OPSET, package_model

VNC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vnc_sstem" / "image.tif"
KINDS = {
    "2d_sigmoid": (ModelConfig(classes=("bright",), depth=2, filters=4), (32, 32), 1),
    "2d_softmax": (ModelConfig(classes=("bright", "dark"), depth=2, filters=4, output="softmax"), (32, 32), 2),
    "3d": (ModelConfig(classes=("bright",), dims=3, depth=2, filters=4, z_poolings=1), (8, 32, 32), 1),
    "2.5d": (ModelConfig(classes=("bright",), dims=3, depth=2, filters=4, slice_context=1), (32, 32), 1),
}
FP32 = PredictConfig(backend="onnxruntime", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, np.ndarray]]:
    """kind -> (model folder, package zip, the stack it was trained on), each trained for a few steps."""
    root = tmp_path_factory.mktemp("bioimageio")
    out = {}
    for kind, (mc, patch, classes) in KINDS.items():
        sample = blob_sample((24 if mc.dims == 3 else 8, 64, 64), seed=3, classes=classes)
        folder = root / kind
        train_model([sample], folder, model_config=mc,
                    config=TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=patch, seed=0, val_steps=0,
                                       bn_recalibration_batches=1))
        stack = root / f"{kind}.tif"
        tifffile.imwrite(stack, sample.image)
        zip_path = root / f"{kind}.zip"
        assert cli(["package", str(folder), "-o", str(zip_path), "--sample", str(stack), "--author", "Test Person"]) == 0
        out[kind] = (folder, zip_path, sample.image)
    return out


def _failures(summary: object) -> list[str]:
    return [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_bioimageio_core_model_test_passes_for_every_weight_format(packaged: dict, kind: str) -> None:
    from bioimageio.core import test_model

    _, zip_path, _ = packaged[kind]
    summary = test_model(zip_path)
    assert summary.status == "passed", _failures(summary)
    names = " ".join(d.name for d in summary.details).lower()
    for fmt in ("onnx", "torchscript", "pytorch_state_dict"):  # every format was run, test tensors reproduced
        assert fmt in names
    assert "reproduce" in names


def test_package_declares_sizes_halo_preprocessing_and_our_config(packaged: dict) -> None:
    folder, zip_path, _ = packaged["3d"]
    with zipfile.ZipFile(zip_path) as zf:
        rdf = YAML(typ="safe").load(zf.read("rdf.yaml"))
        names = set(zf.namelist())
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert {"model.onnx", "model.torchscript.pt", "weights.pt", "emseg_unet.py", "cover.png", "README.md",
            "test_input.npy", "test_output.npy"} <= names
    info = read_model_info(folder)
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("type") for a in inp["axes"]] == ["batch", "channel", "space", "space", "space"]
    steps = [a["size"]["step"] for a in inp["axes"][2:]]
    assert tuple(steps) == info.model.spatial_multiple
    halos = [a.get("halo", 0) for a in out["axes"][2:]]
    assert tuple(halos) == info.receptive_field.halo  # type: ignore[union-attr]
    scale = [p for p in inp["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (info.normalization.low, info.normalization.high)
    assert rdf["config"]["fiji_emseg"]["config.json"]["model"] == info.model.to_dict()
    assert "electron-microscopy" in rdf["tags"] and "3d" in rdf["tags"] and "bright" in rdf["tags"]
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["dims"] == 3


def test_onnx_weights_run_in_onnxruntime_at_deepimagej_opset(packaged: dict, tmp_path: Path) -> None:
    _, zip_path, _ = packaged["2d_softmax"]
    with zipfile.ZipFile(zip_path) as zf:
        zf.extract("model.onnx", tmp_path)
        x = np.load(zf.open("test_input.npy"))
        ref = np.load(zf.open("test_output.npy"))
    model = onnx.load(str(tmp_path / "model.onnx"))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert opsets["ai.onnx"] <= DEEPIMAGEJ_OPSET == 17
    assert model.ir_version <= DEEPIMAGEJ_IR_VERSION == 8  # ONNX Runtime 1.13.1 reads IR 8 at most
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    lo, hi = np.percentile(x, [1.0, 99.8])
    probs = sess.run(None, {sess.get_inputs()[0].name: ((x - lo) / (hi - lo)).astype(np.float32)})[0]
    assert probs.shape == ref.shape and np.abs(probs - ref).max() < 1e-4
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax over background + classes


@pytest.mark.data
def test_round_trip_on_real_vnc_crop_equals_the_model_folder(packaged: dict, tmp_path: Path) -> None:
    if not VNC.is_file():
        pytest.skip("../shared/data/vnc_sstem is absent")
    folder = packaged["2d_sigmoid"][0]
    real = tifffile.imread(VNC, key=range(3))[:, 100:420, 200:520]  # 3 slices of 320², several tiles each
    stack = tmp_path / "vnc_crop.tif"
    tifffile.imwrite(stack, real, photometric="minisblack")
    zip_path = tmp_path / "vnc_model.zip"
    report = package_model(folder, zip_path, stack)
    assert report.test_shape == (1, 1, 256, 256)
    tile = PredictConfig(backend="onnxruntime", device="cpu", precision="fp32", tile=(128, 128))
    with Predictor(folder, tile) as p:
        ref = p.predict_block(real, (0, 3))
    for cfg in (tile, PredictConfig(backend="torch", device="cpu", precision="fp32", tile=(128, 128))):
        with Predictor(zip_path, cfg) as p:
            got = p.predict_block(real, (0, 3))
        assert np.abs(got - ref).max() < 1e-4, cfg.backend
    # the command line: same masks from the package as from the folder
    assert cli(["predict", str(folder), str(stack), "-o", str(tmp_path / "a"), "--backend", "onnxruntime", "-q"]) == 0
    assert cli(["predict", str(zip_path), str(stack), "-o", str(tmp_path / "b"), "--backend", "onnxruntime", "-q"]) == 0
    a = tifffile.imread(tmp_path / "a" / "vnc_crop_bright_mask.tif")
    b = tifffile.imread(tmp_path / "b" / "vnc_crop_bright_mask.tif")
    assert np.array_equal(a, b) and a.any()


def _rewrite(zip_path: Path, out: Path, edit: object) -> Path:
    """A copy of a package with its rdf.yaml changed by *edit* (as another tool would have written it)."""
    yaml = YAML(typ="safe")
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "rdf.yaml":
                rdf = yaml.load(data)
                edit(rdf)  # type: ignore[operator]
                import io

                buf = io.StringIO()
                yaml.dump(rdf, buf)
                data = buf.getvalue().encode()
            dst.writestr(item, data)
    return out


def _foreign(rdf: dict) -> None:
    rdf.pop("config", None)
    del rdf["weights"]["pytorch_state_dict"]
    for w in rdf["weights"].values():
        w.pop("parent", None)
    rdf["weights"]["torchscript"]["parent"] = "onnx"


def test_a_package_from_another_tool_runs_from_its_declared_axes_halo_and_preprocessing(packaged: dict, tmp_path: Path) -> None:
    folder, zip_path, image = packaged["2d_sigmoid"]
    foreign = _rewrite(zip_path, tmp_path / "foreign.zip", _foreign)
    with Predictor(folder, FP32) as p:
        ref = p.predict_block(image, (0, 2))
    for backend in ("onnxruntime", "torch"):  # ONNX, then TorchScript
        with Predictor(foreign, PredictConfig(backend=backend, device="cpu")) as p:
            assert p.info.normalization.method == "percentile"
            assert p.rf.halo == read_model_info(folder).receptive_field.halo  # type: ignore[union-attr]
            assert p.backend.name == ("onnxruntime" if backend == "onnxruntime" else "torchscript")
            got = p.predict_block(image, (0, 2))
        assert np.abs(got - ref).max() < 1e-4
    with pytest.raises(ModelFileError, match="no pytorch_state_dict"):
        train_model([blob_sample((8, 64, 64), seed=4)], tmp_path / "ft", init_from=foreign,
                    config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, patch_size=(32, 32), val_steps=0))
    assert not (tmp_path / "ft").exists()


def test_fine_tuning_starts_from_a_package_state_dict(packaged: dict, tmp_path: Path) -> None:
    _, zip_path, _ = packaged["2d_sigmoid"]
    sample = blob_sample((8, 64, 64), seed=5)
    tifffile.imwrite(tmp_path / "img.tif", sample.image)
    tifffile.imwrite(tmp_path / "mask.tif", sample.masks[0])
    code = cli(["train", str(tmp_path / "ft"), "--image", str(tmp_path / "img.tif"), "--masks", str(tmp_path / "mask.tif"),
                "--init-from", str(zip_path), "--epochs", "1", "--steps", "2", "--batch-size", "1", "--patch-size", "32", "32",
                "--val-steps", "0", "--no-export", "-q"])
    assert code == 0
    info = read_model_info(tmp_path / "ft")
    assert info.model.depth == 2 and info.model.filters == 4  # the package's architecture, from its state dict


def test_info_lists_formats_and_the_choice(packaged: dict, capsys: pytest.CaptureFixture[str]) -> None:
    _, zip_path, _ = packaged["2d_sigmoid"]
    assert cli(["info", str(zip_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    present = {k for k, v in d["weight_formats"].items() if v["present"]}
    assert present == {"bioimageio", "onnx_fp32", "torchscript", "pytorch_state_dict"}
    assert d["prediction_would_use"][0]["reason"]
    assert cli(["info", str(zip_path)]) == 0
    assert "prediction uses:" in capsys.readouterr().out


def _bad_inputs(packaged: dict, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    zip_path = packaged["2d_sigmoid"][1]
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(zip_path.read_bytes()[: 2000])
    dataset = tmp_path / "dataset" / "rdf.yaml"
    dataset.parent.mkdir()
    dataset.write_text("format_version: 0.3.0\ntype: dataset\nname: some data\ndescription: d\n")

    def keras_only(rdf: dict) -> None:
        rdf.pop("config", None)
        rdf["weights"] = {"keras_hdf5": {"source": "model.onnx", "tensorflow_version": "2.10.0"}}

    def channels_last(rdf: dict) -> None:
        _foreign(rdf)
        axes = rdf["inputs"][0]["axes"]
        rdf["inputs"][0]["axes"] = [axes[0], *axes[2:], axes[1]]

    return {
        "corrupt": (corrupt, "not a readable zip"),
        "dataset": (dataset, "describes a bioimage.io 'dataset' resource, not a model"),
        "keras": (_rewrite(zip_path, tmp_path / "keras.zip", keras_only),
                  "needs a keras_hdf5 weight format; fiji-emseg runs onnx, torchscript and pytorch_state_dict"),
        "axes": (_rewrite(zip_path, tmp_path / "axes.zip", channels_last), "does not fit a stack"),
    }


def test_bad_packages_give_one_line_and_write_nothing(packaged: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = packaged["2d_sigmoid"][2]
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, image)
    for name, (path, message) in _bad_inputs(packaged, tmp_path).items():
        out = tmp_path / f"out_{name}"
        assert cli(["predict", str(path), str(stack), "-o", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (name, err)
        assert not out.exists(), name
    with pytest.raises(InputDataError, match="does not fit a stack"):
        Predictor(tmp_path / "axes.zip")


def test_package_refuses_to_overwrite_and_a_too_small_sample(packaged: dict, tmp_path: Path) -> None:
    folder, zip_path, image = packaged["3d"]
    with pytest.raises(Exception, match="exists"):
        package_model(folder, zip_path, image)
    with pytest.raises(InputDataError, match="larger --sample"):
        package_model(folder, tmp_path / "small.zip", image[:1, :8, :8])
    assert not (tmp_path / "small.zip").exists()


def test_package_crop_keeps_the_default_on_axes_given_as_0_and_weight_formats_are_checked(
        packaged: dict, tmp_path: Path) -> None:
    from bioimageio.spec import load_description

    folder, _, image = packaged["2d_sigmoid"]
    small = package_model(folder, tmp_path / "small.zip", image, crop=(0, 32), weight_formats=("onnx",)).path
    descr = load_description(small, perform_io_checks=False)
    with zipfile.ZipFile(small) as z:
        test_input = np.load(z.open("test_input.npy"))
        assert not any(name.endswith((".pt", ".pth", ".safetensors")) for name in z.namelist())
    assert test_input.shape[-2:] == (64, 32)  # Y 0: the 256 default, bounded by the 64 px stack
    assert descr.weights.onnx is not None and descr.weights.torchscript is None
    for bad, kwargs in (("give Y X or Z Y X sizes", {"crop": (-1, 32)}), ("give Y X or Z Y X", {"crop": (32,)}),
                        ("no weight format given", {"weight_formats": ()}),
                        ("unknown weight formats", {"weight_formats": ("keras_hdf5",)})):
        with pytest.raises(ConfigError, match=bad):
            package_model(folder, tmp_path / "bad.zip", image, **kwargs)
        assert not (tmp_path / "bad.zip").exists()


@pytest.mark.slow
def test_masks_package_declares_thresholds_as_binarize_and_passes(packaged: dict, tmp_path: Path) -> None:
    from bioimageio.core import test_model

    folder, _, image = packaged["2d_sigmoid"]
    with pytest.raises(Exception, match="argmax"):
        package_model(packaged["2d_softmax"][0], tmp_path / "softmax_masks.zip", image, masks=True)
    zip_path = tmp_path / "masks.zip"
    package_model(folder, zip_path, image, masks=True, weight_formats=("onnx",))
    summary = test_model(zip_path, weight_format="onnx")
    assert summary.status == "passed", _failures(summary)
    with zipfile.ZipFile(zip_path) as zf:
        rdf = YAML(typ="safe").load(zf.read("rdf.yaml"))
        out = np.load(zf.open("test_output.npy"))
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "binarize"

    def foreign(rdf: dict) -> None:
        rdf.pop("config", None)
        rdf["outputs"][0]["postprocessing"][0]["kwargs"]["threshold"] = [0.3]

    other = _rewrite(zip_path, tmp_path / "other.zip", foreign)
    with Predictor(other, FP32) as p:  # another tool's binarize threshold is the mask threshold here
        assert p.thresholds() == (0.3,)
