"""Peak memory of streaming prediction: stacks of 1×, 4× and 16× a base size must cost the same.

Run from the repository root::

    python benchmarks/predict_memory.py [--quick] [--model small|default] [--input tiff|npy]

Each stack (4, 16 and 64 slices of 1024×1024 uint8 by default) is written to disk, then predicted
from disk to mask TIFFs on disk by ``Predictor.predict`` in a *fresh* Python process, so peaks of
different runs never mix. Each child reports:

- ``VmHWM``: the kernel's exact peak resident set of the process (``ru_maxrss`` is avoided
  because Linux carries the parent's high-water mark into a child started by fork + exec);
- the peak of its *anonymous* memory, sampled every millisecond. With ``--input npy`` the stack
  is a memory map and its touched pages count in RSS and ``VmHWM`` as clean, reclaimable file
  cache; the anonymous peak then says whether the engine itself holds more than a slab.

Printed: peaks per size, the ratio peak(16×)/peak(1×) and the difference, against the target
"flat" (within a few tens of MB) and against what holding the stack as float32 would cost.

Model: ``--model small`` (default) is the default architecture (2D residual U-Net, depth 5, so the
same receptive field, tiles and overlap as the reference model) with 8 instead of 32 filters, so
the run takes about a minute on 2 cores; ``--model default`` uses the reference 8.1 M-parameter
model (about 4–8 s per 1024² slice on 2 cores, so ~6–10 minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_quick_flag, make_model_folder, run_child

TARGET_MIB = 40.0

CHILD = r"""
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
from _memory import MemoryPeak, peak_rss_mib, rss_breakdown_mib
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor

model, source, out = sys.argv[2], sys.argv[3], sys.argv[4]
pred = Predictor(model, PredictConfig(device="cpu"))
ready = rss_breakdown_mib()
with MemoryPeak("anon") as anon:
    t0 = time.perf_counter()
    res = pred.predict(source, out, name="pred", overwrite=True)
    seconds = time.perf_counter() - t0
end = rss_breakdown_mib()
print(json.dumps({"hwm": peak_rss_mib(), "anon_peak": anon.peak, "ready_rss": ready.get("VmRSS", 0.0),
                  "file_rss_end": end.get("RssFile", 0.0), "seconds": seconds, "plan": res.plan}))
"""


def write_stack(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A random uint8 stack on disk, written slice by slice (TIFF) or as a .npy memory map."""
    import tifffile

    rng = np.random.default_rng(seed)
    if path.suffix == ".npy":
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        for z in range(shape[0]):
            mm[z] = rng.integers(0, 256, shape[1:], dtype=np.uint8)
        mm.flush()
        del mm
        return path
    with tifffile.TiffWriter(path, imagej=True) as tw:
        tw.write((rng.integers(0, 256, shape[1:], dtype=np.uint8) for _ in range(shape[0])), shape=shape,
                 dtype=np.uint8, metadata={"axes": "ZYX"})
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick_flag(ap)
    ap.add_argument("--model", choices=("small", "default"), default="small")
    ap.add_argument("--input", choices=("tiff", "npy"), default="tiff", help="lazily read TIFF, or a .npy memory map")
    ap.add_argument("--base-slices", type=int, default=None, help="slices of the 1× stack (default 4; 2 with --quick)")
    ap.add_argument("--size", type=int, default=None, help="slice side (default 1024)")
    args = ap.parse_args()
    base = args.base_slices or (2 if args.quick else 4)
    size = args.size or 1024
    if base < 2:
        ap.error("--base-slices must be at least 2: ONNX Runtime's arena reaches its steady size on the second call")

    from fiji_emseg.engine.models.model_config import ModelConfig

    config = ModelConfig() if args.model == "default" else ModelConfig(filters=8)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="emseg-bench-memory-"))
    try:
        model_dir = make_model_folder(work / "model", config)
        print(f"model: {config.name} ({'reference model' if args.model == 'default' else 'default architecture, 8 filters'}); "
              f"input: {'TIFF read lazily' if args.input == 'tiff' else '.npy memory map'}; output: mask TIFF")
        rows = []
        for mult in (1, 4, 16):
            shape = (base * mult, size, size)
            src = write_stack(work / f"stack{mult}.{'npy' if args.input == 'npy' else 'tif'}", shape, mult)
            r = run_child(CHILD, [str(Path(__file__).resolve().parent), str(model_dir), str(src), str(work / f"out{mult}")])
            r.update(mult=mult, shape=shape, disk=src.stat().st_size / 2**20)
            rows.append(r)
            src.unlink()
            shutil.rmtree(work / f"out{mult}", ignore_errors=True)
            print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "plan"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'stack':>16} {'on disk':>9} {'as float32':>11} {'peak RSS':>9} {'peak anon':>10} {'file RSS':>9} {'voxels/s':>10}")
    for r in rows:
        z, y, x = r["shape"]
        print(f"{r['mult']:>3}× {z:>3}×{y}×{x} {r['disk']:>6.0f} MB {z * y * x * 4 / 2**20:>8.0f} MB "
              f"{r['hwm']:>6.0f} MB {r['anon_peak']:>7.0f} MB {r['file_rss_end']:>6.0f} MB "
              f"{z * y * x / r['seconds'] / 1e6:>6.2f} M")
    lo, hi = rows[0], rows[-1]
    if -(-lo["plan"]["tiles"] // lo["plan"]["batch_size"]) < 2:
        print("warning: the 1× stack fits in one network call, so ONNX Runtime's arena has not reached its steady "
              "size there (it grows on the second call); use more --base-slices")
    grow_hwm, grow_anon = hi["hwm"] - lo["hwm"], hi["anon_peak"] - lo["anon_peak"]
    key = "anon_peak" if args.input == "npy" else "hwm"
    grow = grow_anon if args.input == "npy" else grow_hwm
    verdict = "flat" if grow <= TARGET_MIB else "NOT flat"
    print(f"peak(16×)/peak(1×): {hi['hwm'] / lo['hwm']:.3f} (peak RSS, +{grow_hwm:.0f} MB), "
          f"{hi['anon_peak'] / lo['anon_peak']:.3f} (anonymous, +{grow_anon:.0f} MB); "
          f"target: flat within {TARGET_MIB:.0f} MB on {'anonymous memory' if key == 'anon_peak' else 'peak RSS'}: {verdict}")
    stack16 = hi["shape"][0] * size * size
    print(f"for scale: holding the 16× stack would take {stack16 / 2**20:.0f} MB as uint8, {4 * stack16 / 2**20:.0f} MB "
          f"as float32; the {size}² slab/tile pipeline costs the same at every size (tile {lo['plan']['tile']}, "
          f"batch {lo['plan']['batch_size']})")
    if args.input == "npy":
        print("note: with a memory map, RSS/VmHWM also grow by the touched file pages (clean page cache, dropped by "
              "the kernel under memory pressure); the anonymous peak is the engine's own memory")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
