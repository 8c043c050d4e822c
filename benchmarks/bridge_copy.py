"""ImagePlus <-> numpy copy speed: the bridge's java.nio path against the naive paths.

    python benchmarks/bridge_copy.py [--slices 64] [--size 1024] [--repeats 5] [--json out.json]

A 64×1024×1024 uint16 stack (128 MiB) is copied both ways with
``fiji_emseg.bridge.imageplus`` (fast) and with the conversions people reach for first (naive):
``scyjava.to_python(stack.getPixels(i))``, ``np.array(jarray)`` and element-wise indexing one way,
``JArray(JShort)(plane)``, ``jarray[:] = plane`` and element-wise assignment the other. The bulk
naive paths run on the whole stack, into a fresh full-size array like the fast path (so both pay
the same first-touch page faults); element-wise runs on a few rows and is scaled linearly. Fast figures are
the median of ``--repeats`` runs after one warm-up run (the cold first run is printed too: it
includes JIT warm-up and the first page faults). GB/s are 10^9 bytes per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import timed

from fiji_emseg.bridge.imageplus import (
    imageplus_to_numpy,
    numpy_into_imageplus,
    numpy_to_imageplus,
)
from fiji_emseg.bridge.jvm import ensure_jvm, jclass


def _repeat(fn: Callable[[], Any], repeats: int) -> tuple[float, float, list[float]]:
    """(cold seconds, median warm seconds, all warm seconds)."""
    cold, _ = timed(fn)
    timed(fn)  # warm-up
    warm = [timed(fn)[0] for _ in range(repeats)]
    return cold, statistics.median(warm), warm


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-slices", type=int, default=0,
                    help="slices timed for the bulk naive paths (default: all; they take well under a second)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    info = ensure_jvm(max_heap="4g")
    import jpype
    import scyjava

    z, n = args.slices, args.size
    data = np.random.default_rng(0).integers(0, 65536, (z, n, n), dtype=np.uint16)
    gb = data.nbytes / 1e9
    print(f"ImageJ {info.imagej_version}, Java {jclass('java.lang.System').getProperty('java.version')}, "
          f"JPype {jpype.__version__}, scyjava {scyjava.__version__}")
    print(f"stack: {z}×{n}×{n} uint16 = {data.nbytes / 2**20:.0f} MiB; fast: median of {args.repeats} after warm-up")

    # -- fast paths ----------------------------------------------------------------------------
    holder: dict[str, Any] = {}

    def to_imp() -> None:
        holder["imp"] = numpy_to_imageplus(data, "bench")

    def to_np() -> None:
        holder["arr"] = imageplus_to_numpy(holder["imp"])[0]

    def into_imp() -> None:
        numpy_into_imageplus(data, holder["imp"])

    cold_w, fast_w, _ = _repeat(to_imp, args.repeats)
    cold_r, fast_r, _ = _repeat(to_np, args.repeats)
    cold_i, fast_i, _ = _repeat(into_imp, args.repeats)
    assert holder["arr"].tobytes() == data.tobytes(), "fast round trip is not bit-exact"

    # -- naive paths (subset, scaled) ----------------------------------------------------------
    k = min(args.naive_slices, z) if args.naive_slices > 0 else z
    stack = holder["imp"].getStack()
    element = jpype.JArray(jpype.JShort)

    def naive_to_np_scyjava() -> np.ndarray:
        out = np.empty((k, n, n), np.uint16)
        for i in range(k):
            out[i] = np.asarray(scyjava.to_python(stack.getPixels(i + 1))).view(np.uint16).reshape(n, n)
        return out

    def naive_to_np_array() -> np.ndarray:
        out = np.empty((k, n, n), np.uint16)
        for i in range(k):
            out[i] = np.array(stack.getPixels(i + 1)).view(np.uint16).reshape(n, n)
        return out

    def naive_to_imp_jarray() -> Any:
        st = jclass("ij.ImageStack")(n, n)
        for i in range(k):
            st.addSlice("", element(data[i].view(np.int16).ravel()))
        return st

    def naive_to_imp_slice() -> Any:
        st = jclass("ij.ImageStack")(n, n)
        for i in range(k):
            pixels = element(n * n)
            pixels[:] = data[i].view(np.int16).ravel()
            st.addSlice("", pixels)
        return st

    rows_e = 8  # element-wise: 8 rows of one slice, scaled to the stack

    def naive_to_np_elementwise() -> np.ndarray:
        pixels = stack.getPixels(1)
        out = np.empty(rows_e * n, np.uint16)
        for i in range(rows_e * n):
            out[i] = pixels[i] & 0xFFFF
        return out

    def naive_to_imp_elementwise() -> Any:
        pixels = element(n * n)
        flat = data[0].view(np.int16).ravel()
        for i in range(rows_e * n):
            pixels[i] = int(flat[i])
        return pixels

    scale = z / k
    naive: dict[str, float] = {}
    for name, fn, factor in (
            ("ImagePlus->numpy scyjava.to_python", naive_to_np_scyjava, scale),
            ("ImagePlus->numpy np.array(jarray)", naive_to_np_array, scale),
            ("ImagePlus->numpy element-wise", naive_to_np_elementwise, z * n / rows_e),
            ("numpy->ImagePlus JArray(JShort)(plane)", naive_to_imp_jarray, scale),
            ("numpy->ImagePlus jarray[:] = plane", naive_to_imp_slice, scale),
            ("numpy->ImagePlus element-wise", naive_to_imp_elementwise, z * n / rows_e)):
        timed(fn)  # warm-up
        seconds, out = timed(fn)
        if isinstance(out, np.ndarray):
            expected = data[:k] if out.ndim == 3 else data[0].ravel()[:rows_e * n]
            assert out.tobytes() == expected.tobytes(), name
        naive[name] = seconds * factor

    best_naive_r = min(v for key, v in naive.items() if key.startswith("ImagePlus->numpy"))
    best_naive_w = min(v for key, v in naive.items() if key.startswith("numpy->ImagePlus"))
    rows = [
        ("ImagePlus -> numpy  fast (nio)", gb / fast_r, gb / cold_r),
        ("numpy -> ImagePlus  fast (nio, new image)", gb / fast_w, gb / cold_w),
        ("numpy -> ImagePlus  fast (nio, into existing)", gb / fast_i, gb / cold_i),
    ] + [(f"{name}  naive", gb / sec, None) for name, sec in naive.items()]
    print(f"\n{'path':58s} {'GB/s':>7s} {'cold GB/s':>10s}")
    for name, rate, cold in rows:
        print(f"{name:58s} {rate:7.2f} {'' if cold is None else f'{cold:10.2f}'}")
    print(f"\nnaive bulk paths timed on {k} of {z} slices"
          f"{'' if k == z else ' and scaled'}; element-wise on {rows_e} rows of one slice, scaled to the stack")
    result = {
        "stack": [z, n, n], "dtype": "uint16", "bytes": int(data.nbytes),
        "fast_imageplus_to_numpy_GBps": gb / fast_r,
        "fast_numpy_to_imageplus_GBps": gb / fast_w,
        "fast_numpy_into_imageplus_GBps": gb / fast_i,
        "naive_GBps": {name: gb / sec for name, sec in naive.items()},
        "speedup_imageplus_to_numpy": best_naive_r / fast_r,
        "speedup_numpy_to_imageplus": best_naive_w / fast_w,
        "naive_slices_timed": k,
        "elementwise_rows_timed": rows_e,
    }
    print(f"speed-up over the best naive path: ImagePlus->numpy ×{result['speedup_imageplus_to_numpy']:.1f}, "
          f"numpy->ImagePlus ×{result['speedup_numpy_to_imageplus']:.1f}")
    target = min(result["fast_imageplus_to_numpy_GBps"], result["fast_numpy_to_imageplus_GBps"])
    print(f"target ≥ 1 GB/s both ways: {'met' if target >= 1.0 else 'NOT met'} (slower direction {target:.2f} GB/s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
