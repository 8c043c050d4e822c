"""Block-wise / Dask prediction against plain ``Predictor.predict``: voxels/s and per-worker peak memory.

Run from the repository root::

    python benchmarks/distributed_predict.py                 # the issue's size: 128 x 4096 x 4096 (2.1 GB)
    python benchmarks/distributed_predict.py --quick         # 16 and 48 slices of 1024 x 1024
    python benchmarks/distributed_predict.py --slices 32 96 --side 2048

For each volume size (two sizes, to show that per-worker memory does not grow with the volume):

1. the volume is generated on disk as OME-Zarr (uint8, chunks 16 x 256 x 256; never committed);
2. ``Predictor.predict`` writes mask TIFFs, in a fresh process (its ``VmHWM`` is the peak);
3. ``predict_blockwise`` on a LocalCluster of 1 and of 2 worker processes writes an OME-Zarr
   mask store; each worker's ``VmHWM`` (the kernel's exact peak resident set) is read with
   ``client.run`` at the end. Times exclude the cluster start (reported separately), which a
   long run pays once.

The model is the default architecture's shape at reduced width (``--filters``, default 8, depth 3),
with random weights: speed and memory depend on the architecture, not on the weights.
Printed: a table, and a JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_quick_flag, make_model_folder, run_child

PLAIN = """
import json, sys, time
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from _memory import peak_rss_mib
model, src, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Predictor(model, PredictConfig(threads=threads, backend="onnxruntime")) as p:
    t0 = time.perf_counter()
    r = p.predict(src, out, overwrite=True)
    s = time.perf_counter() - t0
print(json.dumps({"seconds": s, "peak_mib": peak_rss_mib(), "shape": list(r.shape)}))
"""


def _vm_hwm() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_volume(path: Path, slices: int, side: int) -> Path:
    """A deterministic EM-like uint8 volume (smooth blobs + noise), written slab by slab as OME-Zarr."""
    from fiji_emseg.engine.data.ome_zarr import write_ome_zarr
    from fiji_emseg.engine.data.volume_io import Calibration

    class Synthetic:
        shape = (slices, side, side)
        dtype = np.dtype(np.uint8)
        calibration = Calibration((0.008, 0.008, 0.008), "micron")

        def __getitem__(self, key: object) -> np.ndarray:
            zs = key if isinstance(key, slice) else key[0]  # type: ignore[index]
            z = np.arange(*zs.indices(slices), dtype=np.float32)[:, None, None]
            yy = np.arange(side, dtype=np.float32)[None, :, None]
            xx = np.arange(side, dtype=np.float32)[None, None, :]
            v = 128 + 60 * np.sin(xx / 37.0 + z / 11.0) * np.cos(yy / 23.0 - z / 17.0)
            rng = np.random.default_rng(int(z[0, 0, 0]))
            v = v + rng.normal(0, 12, v.shape).astype(np.float32)
            return np.clip(v, 0, 255).astype(np.uint8)

    return write_ome_zarr(Synthetic(), path, chunks=(16, 256, 256), pyramid=False, overwrite=True)


def run_dask(model: Path, src: Path, out: Path, workers: int, threads: int) -> dict[str, float]:
    from distributed import Client, LocalCluster

    from fiji_emseg.engine.inference.blockwise import BlockwiseConfig
    from fiji_emseg.engine.inference.dask_runner import predict_blockwise
    from fiji_emseg.engine.inference.predictor import PredictConfig

    t0 = time.perf_counter()
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", env=env,
                      silence_logs=40) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        start = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = predict_blockwise(model, src, out, PredictConfig(threads=threads, backend="onnxruntime"),
                                BlockwiseConfig(chunks=(16, 256, 256), pyramid=False), scheduler=cluster.scheduler_address,
                                overwrite=True)
        seconds = time.perf_counter() - t1
        peaks = list(client.run(_vm_hwm).values())
    return {"seconds": seconds, "cluster_start_s": start, "peak_mib_per_worker": max(peaks), "blocks": res.blocks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick_flag(ap)
    ap.add_argument("--slices", nargs=2, type=int, default=None, help="the two volume depths (default 48 128)")
    ap.add_argument("--side", type=int, default=None, help="slice width and height (default 4096)")
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None, help="where the volumes go (default: a temporary folder)")
    args = ap.parse_args()
    slices = args.slices or ([16, 48] if args.quick else [48, 128])
    side = args.side or (1024 if args.quick else 4096)
    cores = os.cpu_count() or 1
    from fiji_emseg.engine.models.model_config import ModelConfig

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emseg-dist-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        model = make_model_folder(work / "model", ModelConfig(classes=("mito",), depth=3, filters=args.filters))
        for n in slices:
            src = make_volume(work / f"vol{n}.ome.zarr", n, side)
            voxels = n * side * side
            plain = run_child(PLAIN, [str(model), str(src), str(work / "tiff"), str(cores)],
                              env={"PYTHONPATH": str(Path(__file__).resolve().parent)})
            shutil.rmtree(work / "tiff", ignore_errors=True)
            row = {"slices": n, "side": side, "gb": voxels / 1e9, "plain_vps": voxels / plain["seconds"],
                   "plain_peak_mib": plain["peak_mib"]}
            for w in (1, 2):
                d = run_dask(model, src, work / f"out{n}_{w}.ome.zarr", w, max(1, cores // w))
                shutil.rmtree(work / f"out{n}_{w}.ome.zarr", ignore_errors=True)
                row.update({f"dask{w}_vps": voxels / d["seconds"], f"dask{w}_peak_mib": d["peak_mib_per_worker"],
                            f"dask{w}_start_s": d["cluster_start_s"], "blocks": d["blocks"]})
            row["overhead_1_worker"] = row["plain_vps"] / row["dask1_vps"] - 1
            rows.append(row)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'volume':>22} {'plain M vox/s':>14} {'1 worker':>9} {'2 workers':>10} {'overhead@1':>11} "
          f"{'peak MiB plain/1w/2w (per worker)':>34}")
    for r in rows:
        print(f"{r['slices']:>5}x{r['side']}x{r['side']} ({r['gb']:.2f} GB) {r['plain_vps'] / 1e6:>14.2f} "
              f"{r['dask1_vps'] / 1e6:>9.2f} {r['dask2_vps'] / 1e6:>10.2f} {100 * r['overhead_1_worker']:>10.1f}% "
              f"{r['plain_peak_mib']:>14.0f} / {r['dask1_peak_mib']:.0f} / {r['dask2_peak_mib']:.0f}")
    print(json.dumps({"cores": cores, "rows": rows}))


if __name__ == "__main__":
    main()
