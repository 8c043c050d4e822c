"""Read a bioimage.io model package (``.zip``, a folder or its ``rdf.yaml``) as a model source.

The package is unpacked into a temporary folder and its description read with bioimageio.spec
(offline: no file is downloaded, no URL is checked). What fiji-emseg needs from it becomes a
:class:`~.model_store.ModelInfo`:

- packages written by fiji-emseg carry ``config.fiji_emseg`` (our ``config.json``), so nothing is
  lost; their ``pytorch_state_dict`` is turned back into ``weights.safetensors`` so the package
  also runs in PyTorch and can be fine-tuned (``emseg train --init-from PACKAGE``);
- packages from other tools are described from their axes (one channel; batch, channel, [z,] y,
  x), sizes (min and power-of-two step), output halo, preprocessing (``scale_range`` →
  percentile, ``scale_linear`` → fixed range) and output channel names (treated as independent
  probabilities, thresholded at its ``binarize`` values, else 0.5), and run through their ONNX or TorchScript weights.

Anything we cannot run gets one line naming the reason.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

from ...errors import InputDataError, ModelFileError
from ..data.normalization import NormalizationConfig
from .formats import ModelSource
from .model_config import ModelConfig
from .model_store import WEIGHTS_NAME, ModelInfo, write_model_info
from .receptive_field import ReceptiveField

__all__ = ["RUNNABLE", "open_package", "read_package_description"]

RUNNABLE = ("onnx", "torchscript", "pytorch_state_dict")
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _unpack(path: Path, source: ModelSource) -> Path:
    """The folder holding ``rdf.yaml``: the package folder itself, or the zip unpacked."""
    if path.is_dir():
        return path
    if path.name.endswith(_RDF_NAMES):
        return path.parent
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ModelFileError(f"{path} is damaged ({bad} fails its checksum); download the package again")
            names = zf.namelist()
            if not any(n in _RDF_NAMES for n in names):
                raise ModelFileError(f"{path} is a zip without rdf.yaml, not a bioimage.io package")
            root = source.temp_dir("emseg-bioimageio-")
            zf.extractall(root)
            return root
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"{path} is not a readable zip file ({exc}); download the bioimage.io package again") from exc


def _rdf(root: Path) -> Path:
    for n in _RDF_NAMES:
        if (root / n).is_file():
            return root / n
    raise ModelFileError(f"{root} holds no rdf.yaml; give a bioimage.io model package")


def read_package_description(rdf: Path) -> Any:
    """The package's model description (spec 0.5; older ones are converted), read offline."""
    from ruyaml import YAML

    try:
        raw = YAML(typ="safe").load(rdf.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ModelFileError(f"{rdf} is not readable YAML ({exc}); the package is damaged") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(f"{rdf} is not a bioimage.io description")
    kind = raw.get("type")
    if kind != "model":
        raise ModelFileError(f"{rdf.name} describes a bioimage.io {kind!r} resource, not a model; give a model package")
    from bioimageio.spec import InvalidDescr, ValidationContext, load_model_description

    try:
        with ValidationContext(perform_io_checks=False, root=rdf.parent, raise_errors=False):
            descr = load_model_description(rdf, perform_io_checks=False, format_version="latest")
    except Exception as exc:
        raise ModelFileError(f"{rdf} is not a valid bioimage.io model description ({exc})") from exc
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.details[-1].errors if descr.validation_summary.details else []
        first = errors[0] if errors else None
        why = f"{'.'.join(map(str, first.loc))}: {first.msg}" if first is not None else "invalid"
        raise ModelFileError(f"{rdf} is not a valid bioimage.io model description ({why})")
    return descr


def _local(root: Path, src: Any, what: str) -> Path:
    text = str(src)
    if text.startswith(("http://", "https://")):
        raise ModelFileError(f"the package's {what} is only a link ({text}); download the full package (.zip) and give that")
    p = Path(text)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise ModelFileError(f"the package's {what} {p.name} is missing; the package is incomplete")
    return p


def _axes(tensor: Any) -> list[tuple[str, Any]]:
    return [(str(a.type), a) for a in tensor.axes]


def _foreign_info(descr: Any) -> tuple[ModelInfo, list[str]]:
    """A ModelInfo for a package made by another tool, or one line saying why it cannot run here."""
    from bioimageio.spec.model import v0_5 as bio

    name = descr.name
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelFileError(f"{name} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; fiji-emseg runs "
                             "models with one image input and one output")
    inp, out = descr.inputs[0], descr.outputs[0]
    kinds = [k for k, _ in _axes(inp)]
    space = [a for k, a in _axes(inp) if k == "space"]
    expected = ["batch", "channel", *(["z"] if len(space) == 3 else []), "y", "x"]
    got = ["batch" if k == "batch" else "channel" if k == "channel" else str(a.id) for k, a in _axes(inp)]
    if kinds[:2] != ["batch", "channel"] or len(space) not in (2, 3) or got != expected:
        raise InputDataError(f"{name} declares input axes ({', '.join(got)}); fiji-emseg feeds single-channel stacks as "
                             f"(batch, channel, [z,] y, x), so this package does not fit a stack")
    chan = next(a for k, a in _axes(inp) if k == "channel")
    if len(chan.channel_names) != 1:
        raise InputDataError(f"{name} expects {len(chan.channel_names)} input channels; fiji-emseg predicts single-channel stacks")
    dims = len(space)
    steps, mins = [], []
    for a in space:
        size = a.size
        if isinstance(size, bio.ParameterizedSize):
            steps.append(int(size.step) or 1)
            mins.append(int(size.min))
        else:
            raise InputDataError(f"{name} declares a fixed or referenced input size on axis {a.id}; fiji-emseg tiles stacks "
                                 "and needs sizes given as min + step")
    for s in steps:
        if s & (s - 1):
            raise InputDataError(f"{name} needs input sizes in steps of {steps}; fiji-emseg tiles in powers of two")
    poolings = [int(math.log2(s)) for s in steps]
    out_space = [a for k, a in _axes(out) if k == "space"]
    halo = [int(getattr(a, "halo", 0) or 0) for a in out_space]
    if len(halo) != dims:
        raise InputDataError(f"{name}: the output has {len(halo)} spatial axes for {dims} input axes; fiji-emseg needs them equal")
    halo3 = tuple([0] * (3 - dims) + halo)
    out_chan = next((a for k, a in _axes(out) if k == "channel"), None)
    classes = tuple(str(c) for c in out_chan.channel_names) if out_chan is not None else ("foreground",)
    norm = NormalizationConfig("none")
    notes: list[str] = []
    for op in inp.preprocessing:
        if op.id == "ensure_dtype":
            continue
        if op.id == "scale_range":
            norm = NormalizationConfig("percentile", float(op.kwargs.min_percentile), float(op.kwargs.max_percentile))
        elif op.id == "scale_linear" and not isinstance(op.kwargs.gain, list) and not isinstance(op.kwargs.offset, list):
            gain, off = float(op.kwargs.gain), float(op.kwargs.offset)
            low = -off / gain
            norm = NormalizationConfig("fixed", low, low + 1.0 / gain)
        else:
            raise ModelFileError(f"{name} preprocesses its input with {op.id!r}; fiji-emseg applies scale_range and "
                                 "scale_linear only")
    thresholds: list[float] | None = None
    post = [op for op in out.postprocessing if op.id != "ensure_dtype"]
    if post and post[0].id == "binarize":  # the package's thresholds are ours; we threshold the probabilities
        t = post[0].kwargs.threshold
        thresholds = [float(v) for v in t] if isinstance(t, list) else [float(t)] * len(classes)
        post = post[1:]
    if post:
        notes.append(f"{name}: its output postprocessing ({', '.join(op.id for op in post)}) is not applied; "
                     "masks threshold the network output")
    z_pool = poolings[0] if dims == 3 else None
    depth = max(poolings[-1], poolings[-2]) + 1
    mc = ModelConfig(classes=classes, dims=dims, depth=depth, z_poolings=z_pool, norm="none", architecture="bioimageio",
                     output="sigmoid")
    rf = ReceptiveField(halo3)  # type: ignore[arg-type]
    training: dict[str, Any] = {"status": "imported", "bioimageio": {"name": name, "min_size": mins}}
    if thresholds is not None and len(thresholds) == len(classes):
        training["thresholds"] = dict(zip(classes, thresholds, strict=True))
    info = ModelInfo(mc, norm, rf, training)
    notes.append(f"{name} (bioimage.io, {dims}D): outputs {', '.join(classes)} read as independent probabilities")
    return info, notes


def _own_info(descr: Any) -> ModelInfo | None:
    cfg = descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config)
    ours = (cfg or {}).get("fiji_emseg")
    if not isinstance(ours, dict) or "config.json" not in ours:
        return None
    return ModelInfo.from_dict(ours["config.json"], "rdf.yaml config.fiji_emseg")


def _state_dict_to_folder(root: Path, weights: Path, info: ModelInfo) -> None:
    """Our own package's ``.pt`` state dict (of the probability head) as a model folder's safetensors."""
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"the package's state dict {weights.name} cannot be read ({exc}); the package is damaged") from exc
    plain = {k.removeprefix("net."): v.contiguous() for k, v in state.items()}
    save_file(plain, str(root / WEIGHTS_NAME), metadata={"format": "fiji-emseg-model"})
    write_model_info(root, info)


def open_package(path: Path) -> ModelSource:
    """A :class:`ModelSource` for a bioimage.io package; raises one-line errors for what cannot run."""
    source = ModelSource(path, "bioimageio", ModelInfo(ModelConfig()), None)
    try:
        root = _unpack(path, source)
        descr = read_package_description(_rdf(root))
        w = descr.weights
        present = [f for f in ("onnx", "torchscript", "pytorch_state_dict", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle",
                               "tensorflow_js") if getattr(w, f, None) is not None]
        info = _own_info(descr)
        runnable = [f for f in present if f in ("onnx", "torchscript") or (f == "pytorch_state_dict" and info is not None
                                                                           and info.model.architecture == "unet")]
        if not runnable:
            raise ModelFileError(f"{path.name} needs a {present[0] if present else 'missing'} weight format; "
                                 "fiji-emseg runs onnx, torchscript and pytorch_state_dict (of fiji-emseg's own models)")
        notes: list[str] = []
        if info is None:
            info, notes = _foreign_info(descr)
        if path.is_dir() or path.name.endswith(_RDF_NAMES):  # never write into the user's package folder
            work = source.temp_dir("emseg-bioimageio-")
        else:
            work = root
        if "onnx" in runnable:
            source.files["onnx_fp32"] = _local(root, w.onnx.source, "ONNX weights")
        if "torchscript" in runnable:
            source.files["torchscript"] = _local(root, w.torchscript.source, "TorchScript weights")
        if "pytorch_state_dict" in runnable:
            _state_dict_to_folder(work, _local(root, w.pytorch_state_dict.source, "state dict"), info)
        source.root = work
        source.info = info
        source.notes = notes
        return source
    except BaseException:
        source.close()
        raise
