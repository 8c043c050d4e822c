"""Streaming holds: predicting a memory-mapped stack 8× larger does not raise peak memory.

Acceptance criterion (issue 3): peak memory must not grow by more than a few tens of MB when
the stack grows 8×. Each prediction runs in a fresh Python process that reports its own peak,
so the two runs cannot mix (and the pytest process's own size does not leak into the figures).

What is measured is the peak of the child's *anonymous* memory (RssAnon + RssShmem, sampled
every millisecond). ``ru_maxrss``/``VmHWM`` would be wrong twice over here: pages of the input
memory map count in RSS once touched (clean file cache the kernel drops under pressure; for
the 8× stack they alone would add ~84 MB even when the engine streams perfectly), and after
fork + exec Linux carries the parent's high-water mark into ``ru_maxrss``. An engine that holds
the whole stack (or all its outputs) in memory adds ≥ 84 MB of anonymous memory for 8×; it streams
if the difference stays within 40 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

N_SLICES = 3  # small stack; the large one has 8× as many
SIDE = 1024  # 8 × 3 × 1024² float32 = 96 MB, 84 MB more than the small stack
LIMIT_MIB = 40.0
#: benchmarks/_memory.py holds the one memory sampler of benchmarks and tests (standard library only).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to read memory")

CHILD = r"""
import json, sys
import numpy as np
import tifffile
sys.path.insert(0, sys.argv[4])
from _memory import MemoryPeak, peak_rss_mib
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor

model, source, out = sys.argv[1:4]
predictor = Predictor(model, PredictConfig(device="cpu"))
stack = np.load(source, mmap_mode="r")
# One-time costs (kernel and primitive caches, allocator arenas of the worker threads) are paid
# by a warm-up on the first slices, so that what differs between the two runs is the stack size.
predictor.predict(np.array(stack[:3]), out + "_warmup", name="warm")
with MemoryPeak("anon") as anon:
    result = predictor.predict(stack, out, name="pred")
with tifffile.TiffFile(next(iter(result.files.values()))) as tif:
    written = len(tif.pages)
print(json.dumps({"anon_peak": anon.peak, "hwm": peak_rss_mib(), "slices_written": written}))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2D model folder with its ONNX export, so the child processes do not export again."""
    import torch

    from fiji_emseg.engine.models.architectures import build_model
    from fiji_emseg.engine.models.model_config import ModelConfig
    from fiji_emseg.engine.models.model_store import (
        WEIGHTS_NAME,
        ModelInfo,
        save_weights,
        write_model_info,
    )
    from fiji_emseg.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("tiny_model")
    config = ModelConfig(classes=("a",), depth=2, filters=4)
    torch.manual_seed(0)
    save_weights(build_model(config).eval(), folder / WEIGHTS_NAME)
    write_model_info(folder, ModelInfo(model=config))
    export_onnx(folder)
    return folder


def _memmap_stack(path: Path, slices: int) -> Path:
    rng = np.random.default_rng(slices)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(slices, SIDE, SIDE))
    for z in range(slices):
        mm[z] = rng.random((SIDE, SIDE), dtype=np.float32)
    mm.flush()
    del mm
    return path


def _peak_in_child(model: Path, source: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(source), str(out), str(BENCHMARKS)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _least_peak(model: Path, source: Path, out: Path, runs: int = 2) -> dict[str, float]:
    """The run with the lowest peak of *runs* fresh children: a busy machine only ever adds to a peak
    (a late-scheduled writer thread holds a slab longer), it never hides memory the engine holds."""
    results = [_peak_in_child(model, source, out.with_name(f"{out.name}_{i}")) for i in range(runs)]
    return min(results, key=lambda r: r["anon_peak"])


def test_peak_memory_does_not_grow_with_stack_size(tiny_model: Path, tmp_path: Path) -> None:
    small = _least_peak(tiny_model, _memmap_stack(tmp_path / "small.npy", N_SLICES), tmp_path / "out_small")
    large = _least_peak(tiny_model, _memmap_stack(tmp_path / "large.npy", 8 * N_SLICES), tmp_path / "out_large")
    assert small["slices_written"] == N_SLICES and large["slices_written"] == 8 * N_SLICES
    growth = large["anon_peak"] - small["anon_peak"]
    assert growth <= LIMIT_MIB, (
        f"peak anonymous memory grew by {growth:.0f} MiB ({small['anon_peak']:.0f} → {large['anon_peak']:.0f} MiB; "
        f"VmHWM {small['hwm']:.0f} → {large['hwm']:.0f} MiB) for a stack 8× larger "
        f"(+{7 * N_SLICES * SIDE * SIDE * 4 / 2**20:.0f} MiB of float32): prediction no longer streams")
