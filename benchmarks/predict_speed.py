"""Prediction speed of the engine against the plain PyTorch way and against DeepSCEM's loop.

Run from the repository root::

    python benchmarks/predict_speed.py [--quick] [--slices N] [--device auto|cpu|cuda]

Model: the default 2D model (``ModelConfig()``: residual U-Net, depth 5, 32 filters, 8.1 M
parameters) with seeded random weights and calibrated BatchNorm statistics; the speed does not
depend on the weights. Data: a seeded random, smoothed uint8 stack (16×1024×1024 by default).

CPU section (issue 3), all on the same slices and with the same intensity normalisation:

- (a)  this engine (:class:`Predictor`) with its defaults: the automatic CPU precision (the verified int8
       ONNX model, calibrated on the stack as ``emseg export --int8 --calibration`` does; else PyTorch bf16
       on CPUs with bf16 units; else ONNX Runtime fp32), exact overlap
       (2 × the measured receptive-field radius), cosine blending, 1024² tiles, batched tiles;
       end to end on the whole stack from memory, and from a TIFF on disk to mask TIFFs on disk.
- (a32) the same engine forced to ONNX Runtime fp32, to show what the precision contributes.
- (a8) the int8 model run as it is (ONNX Runtime), verified or not: its speed does not depend on
       the weights, but whether it is *verified* (and so used by (a)) does. Random weights give
       probabilities near 0.5 almost everywhere, where int8 rounding flips masks, so with the
       default random model the int8 copy usually fails verification and (a) falls back to bf16/fp32;
       ``--model`` takes a trained model folder instead (e.g. from ``emseg train``), whose own
       verified int8 copy is then used.
- (a') the same engine forced to DeepSCEM's tile size and overlap (256² tiles, 256 − stride px
       of overlap), which separates the gain of the loop/batching/runtime from that of larger tiles.
- (b)  eager PyTorch on whole slices, the plain way: ``eval()``, ``no_grad()``, one NCHW float32
       slice per call, sigmoid, threshold.
- (c)  DeepSCEM's prediction loop re-implemented in eager PyTorch: one 256² tile per call,
       batch 1, reflect padding of one stride before the image, kept windows of one stride
       starting one stride before the image (``ceil(n / stride) + 1`` tiles per axis, i.e. one
       extra tile per axis; in its no-overlap mode that tile is all padding), hard centre crop,
       no blending. Reading of the overlap mode: tiles advance by about 2/3 of the patch
       (stride 176 = 0.69 × 256, the nearest multiple of the pooling grid), which computes ~2×
       the no-overlap work, as the ~2.2× slowdown measured on DeepSCEM itself suggests.
       Upstream's ``pred.infer_pad(overlap=2)`` (from Cyril-Meyer/lii) advances by half a patch
       (``--deepscem-stride 128``: 81 instead of 49 tiles on 1024²), so our (c) is, if anything, cheaper
       than DeepSCEM. Real DeepSCEM also clears the TensorFlow session before every call, which
       (c) does not: (c) is a favourable version of DeepSCEM.

(a), (a'), (b) and (c) are interleaved slice by slice on a few slices (``--compare-slices``), and
ratios are medians of per-slice paired ratios, because these shared 2-core machines are noisy.
Quote figures from an idle machine only: when other processes compete for the cores, eager
PyTorch (OpenMP) slows down far more than ONNX Runtime (measured here: (c) fell from ~130 k to
~17 k voxels/s under a load of ~4.5 on 2 cores, (a) only from ~510 k to ~165 k), which inflates
(a)/(b) and (a)/(c); the script warns when the CPUs are busy before it starts.
Masks are compared so that the speed comparison is honest (same network, same output up to
tile-border effects). The (a)/(c) line is printed as (voxels computed by (c) / by (a)) × (speed per
computed voxel): on 2 idle cores (c) computes 3.06× the voxels of (a) while ONNX Runtime is only
~1.3× faster per voxel than oneDNN-backed eager PyTorch on 256² tiles, which bounds (a)/(c) near 4×
against this favourable (c); against DeepSCEM's own measured speed the gain is far larger.

GPU section (when ``torch.cuda.is_available()``): 2048×1536 slices, end to end from a TIFF on disk to
mask TIFFs on disk, for every backend that starts (ONNX Runtime CUDA when listed by
``onnxruntime.get_available_providers()``; PyTorch CUDA fp32, bf16, fp16), each with whole-slice
tiles and with 1024² tiles plus the default exact overlap and blending; target ≥ 300 M voxels/s.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_quick_flag, fmt_rate, make_model_folder, median, timed

DEEPSCEM_CPU = {"without overlap": 60e3, "with overlap": 27e3}  # FIELD_NOTES §1, same 2-core CPUs
TARGET_A_OVER_C = 10.0
TARGET_A_OVER_B = 1.5
TARGET_GPU = 300e6
TILE_C = 256
A2 = "a'"  # the name of method (a') in the tables below


# ----------------------------------------------------------------------------- data


def make_stack(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 noise with some spatial structure (smoothed noise plus grain), reproducible."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty(shape, np.uint8)
    for z in range(shape[0]):
        smooth = gaussian_filter(rng.standard_normal(shape[1:]).astype(np.float32), 6)
        smooth *= 60.0 / (smooth.std() + 1e-6)
        grain = rng.normal(0.0, 20.0, shape[1:]).astype(np.float32)
        out[z] = np.clip(128.0 + smooth + grain, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- the three ways


class PlainTorch:
    """(b) and (c): the network as a user runs it in eager PyTorch (probabilities via sigmoid)."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from fiji_emseg.engine.models.model_store import load_model

        self.torch = torch
        self.net = load_model(model_dir, "cpu").module.eval()

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(Y, X) float32 → (Y, X) probabilities, one network call with batch 1."""
        torch = self.torch
        with torch.no_grad():
            return torch.sigmoid(self.net(torch.from_numpy(np.ascontiguousarray(x))[None, None]))[0, 0].numpy()

    def whole_slice(self, img: np.ndarray, stats: Any) -> np.ndarray:
        """(b): normalise, one call on the whole slice, threshold."""
        from fiji_emseg.engine.data.normalization import apply_normalization

        return (self.probs(apply_normalization(img, stats)) > 0.5).astype(np.uint8)

    def deepscem(self, img: np.ndarray, stats: Any, stride: int, tile: int = TILE_C) -> tuple[np.ndarray, int]:
        """(c): DeepSCEM's ``infer_pad`` loop in 2D with a general stride (see module docstring)."""
        from fiji_emseg.engine.data.normalization import apply_normalization

        x = apply_normalization(img, stats)
        s, cb = stride, (tile - stride) // 2
        ny, nx = x.shape
        py, px = math.ceil(ny / s) * s - ny, math.ceil(nx / s) * s - nx
        xp = np.pad(x, ((s, s + py), (s, s + px)), mode="reflect")
        result = np.zeros(xp.shape, np.float32)
        calls = 0
        for y in range(0, xp.shape[0] - s, s):
            for x0 in range(0, xp.shape[1] - s, s):
                p = xp[y:y + tile, x0:x0 + tile]
                if p.shape != (tile, tile):
                    raise LookupError(f"tile at ({y}, {x0}) leaves the padded image")
                out = self.probs(p)
                result[y + cb:y + cb + s, x0 + cb:x0 + cb + s] = out[cb:cb + s, cb:cb + s]
                calls += 1
        return (result[s:s + ny, s:s + nx] > 0.5).astype(np.uint8), calls


def deepscem_tiles(n: int, stride: int) -> int:
    return math.ceil(n / stride) + 1


def deepscem_interior(n: int, stride: int, halo: int, tile: int = TILE_C) -> np.ndarray:
    """1D mask of pixels whose (c) tile holds their whole receptive field, away from the image edge."""
    s, cb = stride, (tile - stride) // 2
    keep = np.zeros(n, bool)
    for y in range(0, math.ceil(n / s) * s + s, s):  # tile starts in padded coordinates
        lo, hi = max(y - s + max(cb, halo), 0), min(y - s + min(cb + s, tile - halo), n)
        if hi > lo:
            keep[lo:hi] = True
    keep[:halo] = keep[n - halo:] = False
    return keep


def engine_masks(result: Any) -> np.ndarray:
    """(Z, Y, X) uint8 0/1 masks of the first class from an in-memory PredictionResult."""
    return np.asarray(result.masks.values[..., 0])


def differ(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    d = (a > 0) != (b > 0)
    if where is not None:
        d = d[..., where]
    return float(d.mean()) if d.size else float("nan")


# ----------------------------------------------------------------------------- CPU section


def cpu_section(args: argparse.Namespace, model_dir: Path, work: Path) -> None:
    import tifffile

    from fiji_emseg.engine.data.normalization import compute_stats
    from fiji_emseg.engine.data.volume_io import write_volume
    from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
    from fiji_emseg.engine.models.model_store import read_model_info

    shape = (args.slices, args.size, args.size)
    vox_slice = args.size * args.size
    stack = make_stack(shape, args.seed)
    tif = write_volume(work / "stack.tif", stack, overwrite=True)
    info = read_model_info(model_dir)
    halo = info.ensure_receptive_field().halo[1]
    s = args.deepscem_stride
    overlap_c = TILE_C - s

    from fiji_emseg.engine.models.model_store import INT8_NAME
    from fiji_emseg.engine.models.onnx_metadata import is_verified_int8

    if not args.no_int8 and not (model_dir / INT8_NAME).is_file():
        # what 'emseg export MODEL --int8 --calibration stack.tif' gives a user
        from fiji_emseg.export.quantize import quantize_int8, tiles_from_volume

        calib = tiles_from_volume(tif, info, (1, 256, 256), 32, seed=11)
        check = tiles_from_volume(tif, info, (1, 256, 256), 16, seed=12)
        print(quantize_int8(model_dir, calib, check).summary())
    has_int8 = (model_dir / INT8_NAME).is_file()
    if has_int8:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(model_dir / INT8_NAME), load_external_data=False).metadata_props}
        print(f"int8 copy: {'verified' if is_verified_int8(model_dir / INT8_NAME) else 'NOT verified'}, "
              f"mask agreement (Dice) with fp32 {props.get('fiji_emseg.int8_agreement')}")
    # (b) and (c) threshold at 0.5; so does the engine here, whatever threshold training calibrated
    half = 0.5
    pa = Predictor(model_dir, PredictConfig(device="cpu", thresholds=half))
    pa8 = Predictor(model_dir / INT8_NAME, PredictConfig(device="cpu", thresholds=half)) if has_int8 else None
    pa32 = Predictor(model_dir, PredictConfig(device="cpu", precision="fp32", backend="onnxruntime", thresholds=half))
    pa2 = Predictor(model_dir, PredictConfig(device="cpu", tile=(TILE_C, TILE_C), overlap=overlap_c, thresholds=half))
    plain = PlainTorch(model_dir)
    tiles_c = deepscem_tiles(args.size, s) ** 2
    mult = info.model.spatial_multiple[1]
    print(f"backend (a): {pa.backend.description}; (a32): {pa32.backend.description}")
    print(f"(b), (c): PyTorch {plain.torch.__version__} eager, "
          f"{plain.torch.get_num_threads()} threads")

    # warm-up: ONNX Runtime's first two calls of a shape are slow (the second allocates and first-touches the
    # planned memory-pattern block), PyTorch's first call picks kernels; a long run pays neither per slice
    warnings.filterwarnings("ignore", message=r"tiles of .* compute every voxel")  # (a') is slow on purpose
    t0 = time.perf_counter()
    warm = stack[:2]
    plan_a = pa.predict(warm).plan
    plan_a2_run = pa2.predict(warm).plan
    pa32.predict(warm)
    if pa8 is not None:
        pa8.predict(warm)
    for plan in (plan_a, plan_a2_run):
        plan["tiles"] //= len(warm)  # per slice
    stats0 = compute_stats(warm, info.normalization)
    plain.whole_slice(warm[0, :TILE_C, :TILE_C], stats0)
    plain.whole_slice(warm[0], stats0)
    print(f"warm-up {time.perf_counter() - t0:.0f} s")
    exact = -(-2 * halo // mult) * mult
    print(f"per {args.size}² slice: (a) {plan_a['tiles']} tile(s) of {plan_a['tile'][1]}², exact overlap {exact} px "
          f"(2 × halo {halo} on the {mult}-px grid; {'unused: the slice is one tile' if plan_a['tiles'] == 1 else 'blended'}), "
          f"overhead {plan_a['overlap_overhead']}, batch {plan_a['batch_size']}\n"
          f"  (a') {plan_a2_run['tiles']} tiles of {TILE_C}², overlap {overlap_c}, overhead {plan_a2_run['overlap_overhead']}, "
          f"batch {plan_a2_run['batch_size']} | (b) 1 call, overhead 1.00 | (c) {tiles_c} calls of {TILE_C}² "
          f"(stride {s}, hard crop {(TILE_C - s) // 2} px per side), overhead {tiles_c * TILE_C ** 2 / vox_slice:.2f}, batch 1")

    # ---- interleaved comparison on a few slices
    k = max(1, min(args.compare_slices, args.slices))
    zs = sorted({round(v) for v in np.linspace(0, args.slices - 1, k)})
    names = ("a", "a32", *(("a8",) if pa8 is not None else ()), "a'", "b", "c")
    times: dict[str, list[float]] = {m: [] for m in names}
    masks: dict[str, list[np.ndarray]] = {m: [] for m in times}
    runners: dict[str, Callable[[np.ndarray, np.ndarray, Any], np.ndarray]] = {
        "c": lambda img, one, stats: plain.deepscem(img, stats, s)[0],
        "a": lambda img, one, stats: engine_masks(pa.predict(one))[0],
        "a32": lambda img, one, stats: engine_masks(pa32.predict(one))[0],
        "a8": lambda img, one, stats: engine_masks(pa8.predict(one))[0],  # type: ignore[union-attr]
        "b": lambda img, one, stats: plain.whole_slice(img, stats),
        A2: lambda img, one, stats: engine_masks(pa2.predict(one))[0],
    }
    for i, z in enumerate(zs):
        img = stack[z]
        one = stack[z:z + 1]
        stats = compute_stats(one, info.normalization)  # exactly what the engine computes for this input
        order = ["c", "a", "a32", "a8", "b", A2] if i % 2 == 0 else [A2, "b", "a8", "a32", "a", "c"]
        order = [n for n in order if n in times]
        for name in order:
            dt, out = timed(functools.partial(runners[name], img, one, stats))
            times[name].append(dt)
            masks[name].append(out)
        print(f"  slice {z}: " + ", ".join(f"({n}) {times[n][-1]:.2f} s" for n in names), flush=True)

    rate = {n: vox_slice / median(t) for n, t in times.items()}

    def paired(slow: str, fast: str) -> float:
        """Median over slices of the per-slice time ratio: robust to load that changes between slices."""
        return median([ts / tf for ts, tf in zip(times[slow], times[fast], strict=True)])

    a_over = {n: paired(n, "a") for n in (A2, "b", "c")}
    a32_over = {n: paired(n, "a32") for n in ("b", "c")}
    a8_over = {n: paired(n, "a8") for n in ("b", "c")} if pa8 is not None else {}
    m = {n: np.stack(v) for n, v in masks.items()}

    # ---- end to end on the whole stack: from memory, and TIFF on disk → mask TIFF on disk
    dt_mem, res_mem = timed(lambda: pa.predict(stack))
    out_dir = work / "out"
    dt_tif, res_tif = timed(lambda: pa.predict(tif, out_dir, name="stack", overwrite=True))
    mask_file = res_tif.files[("masks", info.model.classes[0])]
    mem_masks = engine_masks(res_mem)
    tif_masks = tifffile.imread(mask_file)
    e2e_differ = differ(mem_masks, tif_masks)
    n_vox = float(np.prod(shape))

    # ---- report
    print()
    print(f"== CPU: {args.slices}×{args.size}×{args.size} uint8, default 2D model ({info.model.name}), "
          f"{os.cpu_count()} CPUs")
    print(f"(a)  engine end to end, from memory        : {fmt_rate(n_vox / dt_mem):>18}  ({dt_mem:.1f} s; "
          f"{res_mem.plan['tiles']} tiles, overhead {res_mem.plan['overlap_overhead']}, batch {res_mem.plan['batch_size']})")
    print(f"(a)  engine end to end, TIFF → mask TIFF   : {fmt_rate(n_vox / dt_tif):>18}  ({dt_tif:.1f} s; {mask_file.name})")
    print(f"interleaved on slices {zs} (median per slice):")
    print(f"(a)  engine, exact overlap, blending       : {fmt_rate(rate['a']):>18}")
    comp_a2 = plan_a2_run["overlap_overhead"] * rate[A2]
    comp_c = tiles_c * TILE_C ** 2 / vox_slice * rate["c"]
    print(f"(a32) engine, ONNX Runtime fp32           : {fmt_rate(rate['a32']):>18}  ((a)/(c) with fp32: "
          f"{a32_over['c']:.1f}x, (a)/(b) with fp32: {a32_over['b']:.2f}x)")
    if pa8 is not None:
        used = "used by (a)" if pa.backend.description == pa8.backend.description else "not used by (a): unverified"
        print(f"(a8) the int8 model, ONNX Runtime         : {fmt_rate(rate['a8']):>18}  ((a8)/(c): {a8_over['c']:.1f}x, "
              f"(a8)/(b): {a8_over['b']:.2f}x; {used})")
    print(f"(a') engine, {TILE_C}² tiles, overlap {overlap_c:<3}       : {fmt_rate(rate[A2]):>18}  "
          f"(computes {fmt_rate(comp_a2)})")
    print(f"(b)  eager PyTorch, whole slices           : {fmt_rate(rate['b']):>18}")
    print(f"(c)  DeepSCEM loop in eager PyTorch        : {fmt_rate(rate['c']):>18}  (computes {fmt_rate(comp_c)})")
    print(f"     DeepSCEM itself on these CPUs (FIELD_NOTES): {fmt_rate(DEEPSCEM_CPU['with overlap'])} with overlap, "
          f"{fmt_rate(DEEPSCEM_CPU['without overlap'])} without; it also clears the TF session before every call, "
          "so (c) is a favourable version of it")
    ok_c = "meets" if a_over["c"] >= TARGET_A_OVER_C else "MISSES"
    ok_b = "meets" if a_over["b"] >= TARGET_A_OVER_B else "MISSES"
    over_c = tiles_c * TILE_C ** 2 / vox_slice / plan_a["overlap_overhead"]
    print(f"ratio (a)/(c) = {a_over['c']:.1f}×  (target ≥ {TARGET_A_OVER_C:g}×: {ok_c}) = {over_c:.2f}× fewer voxels "
          f"computed × {a_over['c'] / over_c:.2f}× faster per computed voxel")
    print(f"ratio (a)/(b) = {a_over['b']:.2f}×  (target ≥ {TARGET_A_OVER_B:g}×: {ok_b})")
    a2_c = paired("c", A2)
    print(f"ratio (a')/(c) = {a2_c:.1f}× at equal tile size and overlap: {tiles_c / (plan_a2_run['tiles']):.2f}× from "
          f"fewer tiles (no extra tile, last tile flush with the edge), {comp_a2 / comp_c:.1f}× per computed voxel "
          f"(batches of {plan_a2_run['batch_size']}, ONNX Runtime); (a)/(a') = {a_over[A2]:.1f}× from {plan_a['tile'][1]}² tiles")
    ratio_vs_real = rate["a"] / DEEPSCEM_CPU["with overlap"]
    print(f"(a) vs DeepSCEM's measured {fmt_rate(DEEPSCEM_CPU['with overlap'])}: {ratio_vs_real:.0f}× (different runs, indicative)")

    interior = np.outer(deepscem_interior(args.size, s, halo), deepscem_interior(args.size, s, halo))
    print("mask agreement (fraction of voxels that differ; masks have "
          f"{m['b'].mean():.1%} foreground):")
    print(f"  (a) vs (b) : {differ(m['a'], m['b']):.2e}  same network on one tile, (a) in its automatic precision")
    print(f"  (a32) vs (b): {differ(m['a32'], m['b']):.2e}  fp32: ONNX Runtime vs PyTorch rounding only")
    if pa8 is not None:
        print(f"  (a8) vs (b) : {differ(m['a8'], m['b']):.2e}  int8 vs fp32")
    print(f"  (a') vs (b): {differ(m[A2], m['b']):.2e}  overlap {overlap_c} < 2 × halo {halo}: tile-border effects")
    print(f"  (c) vs (b) : {differ(m['c'], m['b']):.2e} overall, {differ(m['c'], m['b'], interior):.2e} where the tile holds "
          f"the whole receptive field ({interior.mean():.0%} of voxels); the rest are tile-border effects of the hard crop")
    print(f"  (a) TIFF→TIFF vs (a) from memory, all {args.slices} slices: {e2e_differ:.2e}")
    for p in (pa, pa2, pa32, *((pa8,) if pa8 is not None else ())):
        p.close()


# ----------------------------------------------------------------------------- GPU section


def gpu_section(args: argparse.Namespace, model_dir: Path, work: Path, device: str) -> None:
    """End to end TIFF → mask TIFFs for every GPU backend/precision that starts (see module docstring)."""
    import onnxruntime as ort
    import tifffile
    import torch

    from fiji_emseg.engine.data.volume_io import write_volume
    from fiji_emseg.engine.inference.backends import ort_cuda_available
    from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor

    dry = not device.startswith("cuda")
    shape = (args.gpu_slices, 1536, 2048) if not dry else (2, 384, 512)
    tiled = (1024, 1024) if not dry else (320, 320)
    name = torch.cuda.get_device_name(0) if not dry else "CPU (dry run of the GPU code path)"
    print()
    print(f"== GPU: {name}; torch {torch.__version__}, onnxruntime {ort.__version__} "
          f"(providers: {', '.join(ort.get_available_providers())})")
    base = make_stack((min(8, shape[0]), *shape[1:]), args.seed + 1)  # cycled: content does not change the speed
    stack = base[np.arange(shape[0]) % base.shape[0]]
    src = write_volume(work / "gpu_stack.tif", stack, overwrite=True)
    warm = write_volume(work / "gpu_warm.tif", stack[:2], overwrite=True)
    del stack
    n_vox = float(np.prod(shape))

    variants: list[tuple[str, str]] = []
    if ort_cuda_available() or dry:
        variants.append(("onnxruntime", "fp32"))
        try:
            from fiji_emseg.export.onnx_export import export_onnx

            export_onnx(model_dir, fp16=True, overwrite=True)  # model.fp16.onnx, picked for precision fp16
            variants.append(("onnxruntime", "fp16"))
        except Exception as exc:
            print(f"  onnxruntime fp16: no fp16 export ({exc})")
    else:
        print("  onnxruntime: CUDAExecutionProvider not available (plain onnxruntime package); skipped")
    variants.append(("torch", "fp32"))
    if dry or torch.cuda.is_bf16_supported():
        variants.append(("torch", "bf16"))
    if not dry:  # CPUs have no fast fp16 convolutions: the dry run would take many minutes
        variants.append(("torch", "fp16"))
    if args.gpu_compile:
        variants.append(("torch", "bf16+compile"))

    reference: np.ndarray | None = None
    best = 0.0
    print(f"{shape[0]}×{shape[1]}×{shape[2]} (Z×Y×X) uint8 TIFF → mask TIFF, end to end:")
    for backend, prec in variants:
        precision, compile_ = prec.split("+")[0], prec.endswith("+compile")
        for label, tile in (("whole-slice tiles", None), (f"{tiled[0]}² tiles + overlap", tiled)):
            cfg = PredictConfig(backend=backend, device=device, precision=precision, compile=compile_, tile=tile)
            tag = f"{backend} {prec}, {label}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred = Predictor(model_dir, cfg)
                if pred.backend.device.startswith("cuda") == dry:
                    print(f"  {tag}: runs on {pred.backend.device}, not the requested device; skipped")
                    pred.close()
                    continue
                out = work / "gpu_out"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred.predict(warm, out / "warm", name="warm", overwrite=True)  # kernel choice, compilation
                    dt, res = timed(functools.partial(pred.predict, src, out, name="gpu", overwrite=True))
            except Exception as exc:
                print(f"  {tag}: failed to run ({type(exc).__name__}: {exc})")
                continue
            mask_file = res.files[("masks", pred.model_config.classes[0])]
            head = tifffile.imread(mask_file, key=range(min(2, shape[0])))
            if reference is None:
                reference = head
            agree = differ(head, reference)
            best = max(best, n_vox / dt)
            print(f"  {tag:<44}: {fmt_rate(n_vox / dt):>18}  ({dt:.2f} s, {res.plan['tiles']} tiles, overhead "
                  f"{res.plan['overlap_overhead']}, batch {res.plan['batch_size']}; masks differ from the first run "
                  f"on {agree:.1e} of voxels)")
            pred.close()
            shutil.rmtree(out, ignore_errors=True)
    if best:
        print(f"best: {fmt_rate(best)} = {best / TARGET_GPU:.2f}× the {fmt_rate(TARGET_GPU)} target"
              + (" (dry run on the CPU: not a GPU figure)" if dry else ""))


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick_flag(ap)
    ap.add_argument("--slices", type=int, default=None, help="slices of the CPU stack (default 16; 2 with --quick)")
    ap.add_argument("--size", type=int, default=None, help="slice side in pixels (default 1024; 512 with --quick)")
    ap.add_argument("--compare-slices", type=int, default=None,
                    help="slices on which (a), (a'), (b), (c) are interleaved (default 3; 1 with --quick)")
    ap.add_argument("--deepscem-stride", type=int, default=176,
                    help="stride of the DeepSCEM loop (176 ≈ 2/3 of 256; 128 = upstream infer_pad overlap=2)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cpu: CPU section only; cuda: GPU section only; auto: CPU, then GPU where available")
    ap.add_argument("--gpu-slices", type=int, default=128, help="slices of 2048×1536 in the GPU section")
    ap.add_argument("--gpu-compile", action="store_true", help="also time torch.compile (bf16) in the GPU section")
    ap.add_argument("--gpu-dry-run", action="store_true",
                    help="run the GPU section's code on the CPU at a tiny size (checks the code path, no figures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", metavar="DIR",
                    help="a trained 2D model folder to time instead of random weights (copied; its int8 copy is used "
                         "as trained)")
    ap.add_argument("--no-int8", action="store_true",
                    help="do not calibrate an int8 copy (then (a) is PyTorch bf16 on CPUs with bf16 units, else fp32)")
    args = ap.parse_args()
    args.slices = args.slices or (2 if args.quick else 16)
    args.size = args.size or (512 if args.quick else 1024)
    args.compare_slices = args.compare_slices or (1 if args.quick else 3)
    if args.size % 16 or args.deepscem_stride % 16 or not 16 <= args.deepscem_stride <= TILE_C:
        ap.error("--size and --deepscem-stride must be multiples of 16 (the model's pooling grid), stride ≤ 256")

    import torch

    gpu = torch.cuda.is_available()
    if args.device == "cuda" and not gpu and not args.gpu_dry_run:
        print("GPU section skipped: torch.cuda.is_available() is False on this machine")
        return 0
    t_start = time.perf_counter()
    import psutil

    busy = psutil.cpu_percent(interval=1.0)
    if args.device != "cuda" and busy > 50:
        print(f"WARNING: the CPUs were {busy:.0f} % busy before starting: other processes compete for the "
              "cores, and eager PyTorch (OpenMP) slows down far more under contention than ONNX Runtime, which "
              "inflates (a)/(b) and (a)/(c); rerun on an idle machine for figures to quote")
    work = Path(tempfile.mkdtemp(prefix="emseg-bench-speed-"))
    try:
        t0 = time.perf_counter()
        if args.model:
            model_dir = Path(shutil.copytree(args.model, work / "model"))
            print(f"model folder {args.model} (copied)")
        else:
            model_dir = make_model_folder(work / "model")
            print(f"model folder with random weights and ONNX export ready in {time.perf_counter() - t0:.0f} s")
        if args.device in ("auto", "cpu"):
            cpu_section(args, model_dir, work)
        if args.gpu_dry_run:
            gpu_section(args, model_dir, work, "cpu")
        elif args.device in ("auto", "cuda"):
            if gpu:
                gpu_section(args, model_dir, work, "cuda")
            else:
                print("\nGPU section skipped: torch.cuda.is_available() is False on this machine")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
