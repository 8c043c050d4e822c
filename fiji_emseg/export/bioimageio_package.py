"""A model folder as a bioimage.io model package (``rdf.yaml`` spec 0.5, zipped) that travels.

deepImageJ (Fiji), ilastik, napari and the BioImage Model Zoo run such packages; ``bioimageio.core``
validates them and reproduces their test tensors. The description is built with bioimageio.spec's
own model classes (never hand-written YAML), so a package that does not satisfy the spec is never
written. What goes in:

- weights: ONNX at opset 17 and IR version 8 (deepImageJ ships ONNX Runtime 1.13.1), TorchScript
  traced from the probability network, and a ``pytorch_state_dict`` with a self-contained
  architecture file (our U-Net's own source) and its kwargs, so the package can be fine-tuned;
- axes with minimum size and step (the spatial multiple), the output halo from the measured
  receptive field, and our normalisation as bioimage.io preprocessing (``scale_range`` with our
  percentiles, or ``scale_linear`` for fixed ranges);
- test tensors computed by our own predictor on a real crop of the user's data;
- a generated README, a cover image (overlay PNG), citations, tags, and ``config.fiji_emseg``
  holding our ``config.json``, so fiji-emseg reads its own packages back without loss.

By default the package's output is the probability map (what deepImageJ users threshold, and
what softmax models need for argmax); the calibrated thresholds are in ``config.fiji_emseg`` and
the README. With ``masks=True`` (sigmoid models) they become ``binarize`` postprocessing and the
package outputs 0/1 masks; bioimage.io's reproduction tolerance (100 mismatched voxels per
million) absorbs voxels within floating-point noise of a threshold.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..engine.data.files import atomic_path
from ..engine.data.volume_io import open_volume
from ..engine.inference.predictor import PredictConfig, Predictor
from ..engine.models.model_store import ModelInfo, load_model
from ..engine.models.onnx_graph import convert_to_onnx, probability_net
from ..errors import ConfigError, InputDataError, ModelFileError, OutputError

__all__ = ["DEEPIMAGEJ_IR_VERSION", "DEEPIMAGEJ_OPSET", "PackageReport", "architecture_source", "package_model"]

#: The newest ONNX opset and IR version that ONNX Runtime 1.13.1 (deepImageJ 3.x) runs.
DEEPIMAGEJ_OPSET = 17
DEEPIMAGEJ_IR_VERSION = 8
WEIGHT_FORMATS = ("onnx", "torchscript", "pytorch_state_dict")
#: Test crop (z, y, x) per model dimensionality, where the caller gives none.
DEFAULT_CROP = {2: (1, 256, 256), 3: (16, 96, 96)}
ARCH_FILE = "emseg_unet.py"
ARCH_CALLABLE = "EmsegUNet"
_UNITS = {"nm": "nanometer", "nanometer": "nanometer", "um": "micrometer", "µm": "micrometer", "micron": "micrometer",
          "micrometer": "micrometer", "mm": "millimeter", "millimeter": "millimeter", "angstrom": "angstrom"}


@dataclass
class PackageReport:
    """What :func:`package_model` wrote and checked."""

    path: Path
    weight_formats: list[str]
    test_shape: tuple[int, ...]
    onnx_opset: int
    onnx_ir_version: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"wrote bioimage.io package {self.path} ({', '.join(self.weight_formats)}; ONNX opset {self.onnx_opset}, "
                f"IR {self.onnx_ir_version}; test tensor {self.test_shape}) in {self.seconds:.1f} s")


def architecture_source() -> str:
    """One self-contained Python file with our U-Net and a bioimage.io callable (no fiji-emseg import).

    Built from the package's own ``model_config.py`` and ``unet.py`` so the architecture in a
    package is exactly the one that trained it.
    """
    from ..engine.models import model_config, unet

    def body(module: Any) -> str:
        text = Path(module.__file__).read_text(encoding="utf-8")
        keep = [ln for ln in text.splitlines()
                if not ln.startswith(("from __future__", "from ...errors", "from .model_config"))]
        return "\n".join(keep)

    return "\n".join([
        '"""fiji-emseg U-Net, self-contained for bioimage.io (generated from fiji_emseg.engine.models)."""',
        "from __future__ import annotations", "",
        "class ConfigError(ValueError):", '    """A model setting out of range."""', "",
        body(model_config), "", body(unet), "", "",
        f"class {ARCH_CALLABLE}(nn.Module):",
        '    """The U-Net with its probability head; kwargs are fiji-emseg\'s ModelConfig fields."""', "",
        "    def __init__(self, **kwargs: Any) -> None:",
        "        super().__init__()",
        "        config = ModelConfig.from_dict(kwargs)",
        "        self.net = build_unet(config)",
        "        self.output = config.output", "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "        logits = self.net(x)",
        '        return torch.softmax(logits, dim=1) if self.output == "softmax" else torch.sigmoid(logits)', "",
    ])


def _min_sizes(info: ModelInfo) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(min, step) per (z, y, x): the spatial multiple, and at least one step beyond twice the halo."""
    rf = info.ensure_receptive_field()
    step = info.model.spatial_multiple
    mins = tuple(s * math.ceil((2 * h + 1) / s) for h, s in zip(rf.halo, step, strict=True))
    return mins, step  # type: ignore[return-value]


def _crop(image: Any, info: ModelInfo, crop: tuple[int, ...] | None) -> np.ndarray:
    """A centred crop (Z, Y, X) of real data that fits the declared sizes (multiples of the step).

    ``crop`` is (Y, X) or (Z, Y, X); None, or 0 on an axis, keeps :data:`DEFAULT_CROP` there
    (Fiji's dialog has one number for Y and X and one for Z, each 0 when left alone).
    """
    mc = info.model
    mins, step = _min_sizes(info)
    default = DEFAULT_CROP[mc.dims]
    if crop is not None and (len(crop) not in (2, 3) or any(int(v) < 0 for v in crop)):
        raise ConfigError(f"test crop {tuple(crop)}: give Y X or Z Y X sizes in voxels (0 keeps the default {default})")
    vol = open_volume(image)
    try:
        shape = tuple(int(s) for s in vol.shape)
        given = (0, 0, 0) if crop is None else (0, *crop) if len(crop) == 2 else tuple(crop)
        want = tuple(int(g) or d for g, d in zip(given, default, strict=True))
        size = []
        for ax, (w, n, m, s) in enumerate(zip(want, shape, mins, step, strict=True)):
            if mc.dims == 2 and ax == 0:
                size.append(1)
                continue
            v = max(m, min(w, n) // s * s)
            if v > n:
                raise InputDataError(
                    f"the test crop needs at least {mins[3 - mc.dims:]} voxels ({', '.join('zyx'[3 - mc.dims:])}) for this "
                    f"model, but the sample stack is {shape} (z, y, x); give a larger --sample stack")
            size.append(v)
        start = [(n - v) // 2 for n, v in zip(shape, size, strict=True)]
        return np.asarray(vol[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]])
    finally:
        vol.close()


def _preprocessing(info: ModelInfo, spatial: list[str]) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    norm = info.normalization
    axes = [bio.AxisId(a) for a in spatial]  # per sample, as our predictor computes them per stack
    ops: list[Any] = [bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32"))]
    if norm.method == "percentile":
        ops.append(bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=axes, min_percentile=norm.low,
                                                                   max_percentile=norm.high, eps=1e-6)))
    elif norm.method == "minmax":
        ops.append(bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=axes, min_percentile=0.0, max_percentile=100.0,
                                                                   eps=1e-6)))
    elif norm.method == "fixed":
        gain = 1.0 / (norm.high - norm.low)
        ops.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=gain, offset=-norm.low * gain)))
    return ops


def _readme(info: ModelInfo, thresholds: tuple[float, ...], test_shape: tuple[int, ...], formats: list[str]) -> str:
    m, tr = info.model, info.training
    best = (tr.get("best_metrics") or {}).get("val_f1") or {}
    data = tr.get("data") or {}
    cal = data.get("calibration") or {}
    rf = info.ensure_receptive_field()
    lines = [
        f"# {m.name}: {', '.join(m.classes)} in volume electron microscopy", "",
        f"A {m.kind} {'residual ' if m.residual else ''}U-Net (depth {m.depth}, {m.filters} filters, {m.norm} norm) "
        f"trained with fiji-emseg {info.software.get('fiji_emseg', __version__)}.", "",
        "## Classes and output",
        f"- classes: {', '.join(m.classes)}",
        f"- output: {'one sigmoid probability per class' if m.output == 'sigmoid' else 'softmax over background + classes (channel 0 = background); masks by argmax'}",
    ]
    if m.output == "sigmoid":
        lines.append("- mask thresholds: " + ", ".join(f"{c} {t:g}" for c, t in zip(m.classes, thresholds, strict=True)))
    lines += ["", "## Input",
              f"- one channel, {info.normalization.describe()} normalisation (declared as preprocessing)",
              f"- sizes: multiples of {list(m.spatial_multiple[3 - m.dims:])}; output halo {list(rf.halo[3 - m.dims:])} "
              "voxels per side (crop it, or tile with that overlap)",
              f"- trained at voxel size {cal['voxel_size']} {cal.get('unit', '')} (z, y, x)" if cal.get("voxel_size")
              else "- training voxel size: not recorded", "",
              "## Training"]
    for role in ("train", "validation"):
        for s in data.get(role) or []:
            lines.append(f"- {role}: {s.get('name')} {tuple(s.get('shape') or ())}")
    word = "kept (the last; keep-best off)" if info.keeps_last_epoch else "best"
    lines.append(f"- status {tr.get('status', '?')}, {tr.get('epochs_run', '?')} epochs, {word} epoch {tr.get('best_epoch', '?')}")
    if best:
        lines.append("- validation F1: " + ", ".join(f"{k} {v:.3f}" for k, v in best.items())
                     + (" (the validation data was also trained on: this measures fit, not generalisation)"
                        if data.get("validation_trained_on") else ""))
    lines += ["", "## Weights", *[f"- {f}" for f in formats],
              f"- test tensors: a real crop {test_shape} predicted by fiji-emseg", "",
              "## Use", "- Fiji: deepImageJ (Plugins > DeepImageJ > DeepImageJ Run), or fiji-emseg's Predict command;",
              "- command line: `emseg predict THIS.zip stack.tif -o out/`.", ""]
    return "\n".join(lines)


def package_model(model: str | Path, output: str | Path, sample: Any, *, crop: tuple[int, ...] | None = None,
                  authors: tuple[str, ...] = (), license: str = "CC-BY-4.0", description: str | None = None,
                  weight_formats: tuple[str, ...] = WEIGHT_FORMATS, masks: bool = False, overwrite: bool = False,
                  trust_custom_code: bool = False, log: Callable[[str], None] | None = None) -> PackageReport:
    """Write *model* (a model folder) as a bioimage.io package ``output`` (``.zip``), checked by bioimageio.spec.

    *sample* is a stack (path or array) of the kind the model was trained on; a centred crop of it
    becomes the test input, and our predictor's output on it the test output. ``masks`` declares
    the model's mask thresholds as ``binarize`` postprocessing (sigmoid models only), so consumers
    such as deepImageJ get 0/1 masks instead of probabilities.
    """
    t0 = time.monotonic()
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"{out}: a bioimage.io package is a .zip file; name it e.g. {out.with_suffix('.zip').name}")
    unknown = set(weight_formats) - set(WEIGHT_FORMATS)
    if unknown or not weight_formats:
        what = f"unknown weight formats {sorted(unknown)}" if unknown else "no weight format given"
        raise ConfigError(f"{what}; choose from {', '.join(WEIGHT_FORMATS)}")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; choose another name or pass --overwrite")
    say = log or (lambda _m: None)
    loaded = load_model(model, "cpu", trust_custom_code)
    info = loaded.info
    mc = info.model
    notes: list[str] = []
    formats = list(weight_formats)
    if "pytorch_state_dict" in formats and mc.architecture != "unet":
        formats.remove("pytorch_state_dict")
        notes.append(f"no pytorch_state_dict: the custom architecture {mc.architecture!r} cannot travel as source")
    if not formats:
        raise ConfigError("no weight format left to package; include onnx or torchscript")
    if masks and mc.output != "sigmoid":
        raise ConfigError("softmax masks are an argmax, which bioimage.io postprocessing cannot express; "
                          "package without --masks (the output is then the probability map)")
    raw = _crop(sample, info, crop)
    with tempfile.TemporaryDirectory(prefix="emseg-package-") as tmp_name:
        tmp = Path(tmp_name)
        say("predicting the test crop")
        with Predictor(loaded.path, PredictConfig(backend="onnxruntime", device="cpu", precision="fp32"),
                       trust_custom_code=trust_custom_code) as predictor:
            probs = predictor.predict_block(raw, (0, raw.shape[0]))  # (K, Z, Y, X)
            thresholds = predictor.thresholds()
        if mc.dims == 2:
            test_in, test_out = raw[:, None].astype(np.float32), np.moveaxis(probs, 1, 0)  # (1, 1, Y, X), (1, K, Y, X)
        else:
            test_in, test_out = raw[None, None].astype(np.float32), probs[None]
        np.save(tmp / "test_input.npy", test_in)
        if masks:
            thr = np.asarray(thresholds, dtype=np.float32).reshape((1, -1) + (1,) * (test_out.ndim - 2))
            test_out = (test_out > thr).astype(np.uint8)
        np.save(tmp / "test_output.npy", np.ascontiguousarray(test_out, dtype=np.uint8 if masks else np.float32))
        descr = _build_description(loaded, tmp, formats, thresholds, test_in, probs, raw, authors, license, description,
                                   say, masks)
        say("writing and checking the package")
        _save(descr, out, overwrite)
    import onnx

    opset, ir = -1, -1
    if "onnx" in formats:
        with tempfile.TemporaryDirectory() as td, zipfile.ZipFile(out) as zf:
            zf.extract("model.onnx", td)
            m = onnx.load(str(Path(td) / "model.onnx"), load_external_data=False)
            opset, ir = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), m.ir_version
    return PackageReport(out, formats, tuple(test_in.shape), opset, ir, time.monotonic() - t0, notes)


def _build_description(loaded: Any, tmp: Path, formats: list[str], thresholds: tuple[float, ...], test_in: np.ndarray,
                       probs: np.ndarray, raw: np.ndarray, authors: tuple[str, ...], license: str,
                       description: str | None, say: Callable[[str], None], masks: bool = False) -> Any:
    import pydantic
    import torch
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as bio

    from ..engine.evaluation.overlay import write_overlay_png

    info: ModelInfo = loaded.info
    mc = info.model
    rf = info.ensure_receptive_field()
    mins, step = _min_sizes(info)
    spatial = ["z", "y", "x"][3 - mc.dims:]
    sidx = list(range(3 - mc.dims, 3))
    cal = (info.training.get("data") or {}).get("calibration") or {}
    unit = _UNITS.get(str(cal.get("unit", "")).lower())
    vox = cal.get("voxel_size") or [1.0, 1.0, 1.0]
    torch_version = torch.__version__.split("+")[0]
    net = probability_net(loaded)
    weights: dict[str, Any] = {}
    has_sd = "pytorch_state_dict" in formats
    if has_sd:
        torch.save(net.state_dict(), tmp / "weights.pt")
        (tmp / ARCH_FILE).write_text(architecture_source(), encoding="utf-8")
        weights["pytorch_state_dict"] = bio.PytorchStateDictWeightsDescr(
            source=tmp / "weights.pt", pytorch_version=torch_version,
            architecture=bio.ArchitectureFromFileDescr(source=tmp / ARCH_FILE, callable=ARCH_CALLABLE,
                                                       kwargs=mc.to_dict()))
    if "onnx" in formats:
        say(f"exporting ONNX (opset {DEEPIMAGEJ_OPSET}, IR {DEEPIMAGEJ_IR_VERSION})")
        convert_to_onnx(loaded, tmp / "model.onnx", opset=DEEPIMAGEJ_OPSET, max_ir_version=DEEPIMAGEJ_IR_VERSION)
        weights["onnx"] = bio.OnnxWeightsDescr(source=tmp / "model.onnx", opset_version=DEEPIMAGEJ_OPSET,
                                               parent="pytorch_state_dict" if has_sd else None)
    if "torchscript" in formats:
        say("tracing TorchScript")
        example = torch.from_numpy(np.zeros((1, 1, *[m * 2 for m in mins[3 - mc.dims:]]), dtype=np.float32))
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
            check = torch.from_numpy(test_in)
            diff = float((traced(check) - net(check)).abs().max())
        if diff > 1e-4:
            raise ModelFileError(f"the traced TorchScript model differs from PyTorch by {diff:.2g}; package without torchscript")
        traced.save(str(tmp / "model.torchscript.pt"))
        weights["torchscript"] = bio.TorchscriptWeightsDescr(
            source=tmp / "model.torchscript.pt", pytorch_version=torch_version,
            parent="pytorch_state_dict" if has_sd else ("onnx" if "onnx" in formats else None))
    # cover: the middle slice of the test crop with the predicted masks
    mid = raw.shape[0] // 2
    if mc.output == "sigmoid":
        cover = np.stack([probs[k, mid] > t for k, t in enumerate(thresholds)])
    else:
        lab = probs[:, mid].argmax(0)
        cover = np.stack([lab == k + 1 for k in range(mc.n_classes)])
    write_overlay_png(tmp / "cover.png", raw[mid], [("fiji-emseg prediction", cover)], mc.classes, overwrite=True)
    (tmp / "README.md").write_text(_readme(info, thresholds, tuple(test_in.shape), formats), encoding="utf-8")

    def space_in(a: str, i: int) -> Any:
        kw: dict[str, Any] = {"id": bio.AxisId(a), "size": bio.ParameterizedSize(min=int(mins[i]), step=int(step[i]))}
        if unit:
            kw.update(unit=unit, scale=float(vox[i]))
        return bio.SpaceInputAxis(**kw)

    def space_out(a: str, i: int) -> Any:
        kw: dict[str, Any] = {"id": bio.AxisId(a), "size": bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a))}
        if unit:
            kw.update(unit=unit, scale=float(vox[i]))
        if rf.halo[i] > 0:
            return bio.SpaceOutputAxisWithHalo(halo=int(rf.halo[i]), **kw)
        return bio.SpaceOutputAxis(**kw)

    channels = list(mc.classes) if mc.output == "sigmoid" else ["background", *mc.classes]
    inp = bio.InputTensorDescr(
        id=bio.TensorId("raw"), description="EM image, one channel (any bit depth; normalised by the preprocessing)",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("em")]), *[space_in(a, i) for a, i in zip(spatial, sidx, strict=True)]],
        test_tensor=bio.FileDescr(source=tmp / "test_input.npy"), preprocessing=_preprocessing(info, spatial))
    post: list[Any] = []
    data: Any = bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
    if masks:  # the calibrated thresholds as bioimage.io postprocessing: 0/1 masks per class
        post = [bio.BinarizeDescr(kwargs=bio.BinarizeAlongAxisKwargs(threshold=[float(t) for t in thresholds],
                                                                     axis=bio.AxisId("channel"))),
                bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="uint8"))]
        data = bio.NominalOrOrdinalDataDescr(values=[0, 1], type="uint8")
    outp = bio.OutputTensorDescr(
        id=bio.TensorId("masks" if masks else "probabilities"),
        description=("0/1 mask per class (probability > the model's threshold)" if masks else
                     "sigmoid probability per class" if mc.output == "sigmoid" else "softmax over background + classes"),
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in channels]),
              *[space_out(a, i) for a, i in zip(spatial, sidx, strict=True)]],
        test_tensor=bio.FileDescr(source=tmp / "test_output.npy"), data=data, postprocessing=post)
    cite = [bio.CiteEntry(text="Ronneberger, Fischer, Brox. U-Net: Convolutional networks for biomedical image "
                               "segmentation. MICCAI 2015", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))]
    if mc.architecture == "unet":  # DeepSCEM's default network, loss and sampling
        cite.append(bio.CiteEntry(text="DeepSCEM: deep-learning segmentation of volume electron microscopy. "
                                       "Biology of the Cell, 2025", doi=bio.Doi("10.1111/boc.202400008")))
    thr = dict(zip(mc.classes, thresholds, strict=True)) if mc.output == "sigmoid" else "argmax"
    config = {"fiji_emseg": {"config.json": info.to_dict(), "thresholds": thr, "version": __version__}}
    tags = ["electron-microscopy", "semantic-segmentation", f"{mc.dims}d", *(["2.5d"] if mc.slice_context else []),
            "fiji-emseg", "unet", *mc.classes]
    text = description or (f"{mc.kind} U-Net segmenting {', '.join(mc.classes)} in volume electron microscopy "
                           f"(fiji-emseg {__version__}).")
    try:
        with ValidationContext(perform_io_checks=True, root=tmp):
            return bio.ModelDescr(
                name=_clean_name(mc.name), description=text,
                authors=[bio.Author(name=a) for a in (authors or ("fiji-emseg user",))],
                packaged_by=[bio.Author(name=f"fiji-emseg {__version__}")],
                cite=cite, license=bio.LicenseId(license), tags=tags, covers=[bio.FileDescr(source=tmp / "cover.png")],
                documentation=bio.FileDescr(source=tmp / "README.md"), inputs=[inp], outputs=[outp], weights=bio.WeightsDescr(**weights),
                config=bio.Config(**config))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise ModelFileError(f"bioimageio.spec refused the description ({'.'.join(map(str, first['loc']))}: "
                             f"{first['msg']}); please report this model's config.json") from exc


def _clean_name(name: str) -> str:
    """The model name as bioimage.io allows it: letters, digits, ``_+- ()`` and spaces
    (``unet2.5d_f16_d5`` -> ``unet2-5d f16 d5``)."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name).replace("_", " ")


def _save(descr: Any, out: Path, overwrite: bool) -> None:
    from bioimageio.spec import save_bioimageio_package

    with atomic_path(out, overwrite=overwrite) as part:
        part.unlink()  # bioimageio.spec writes the zip itself
        save_bioimageio_package(descr, output_path=part)
    if not out.is_file():  # pragma: no cover - atomic_path moved it
        raise OutputError(f"{out} was not written")
