"""Seconds per training step (batch 8, 256x256 patches, default model) and peak memory.

Each configuration trains through the real engine (``train_model``: sampling thread,
augmentation, loss, optimiser) in a fresh child process, so the peaks do not mix. Seconds per
step are the median of the timed steps after warm-up, taken from the engine's own step reports.

CPU: fp32 in NCHW (PyTorch's default layout), fp32 channels_last, and, on CPUs with bf16
units (AVX512-BF16/AMX), bf16 autocast + channels_last, which is the engine's default there
(``amp='auto'``; elsewhere the default is fp32 channels_last). GPU (where one exists): fp32, fp32 + channels_last, bf16 + channels_last, fp16 +
channels_last. Ratios are against the first configuration of the same device, measured in this
run, and against DeepSCEM's 3.35 s/step measured on these 2-core CPUs (FIELD_NOTES §1).

    python benchmarks/train_speed.py [--quick] [--steps N] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_quick_flag, run_child

DEEPSCEM_CPU_S_PER_STEP = 3.35

CHILD = r"""
import json, sys, tempfile, time, statistics, warnings
warnings.simplefilter("ignore")
import torch
from fiji_emseg.engine.callbacks import Callback
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.data.synthetic import make_synthetic_sample
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
sys.path.insert(0, "benchmarks")
from _memory import peak_rss_mib

device, amp, channels_last, warmup, timed = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])

class Clock(Callback):
    def __init__(self):
        self.t = []
    def on_step(self, report):
        self.t.append(time.perf_counter())

sample = make_synthetic_sample((8, 512, 512), seed=0)
clock = Clock()
cfg = TrainConfig(epochs=1, steps_per_epoch=warmup + timed + 1, batch_size=8, patch_size=(256, 256), val_steps=0,
                  bn_recalibration_batches=0, seed=0, device=device, amp=amp, channels_last=channels_last)
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
with tempfile.TemporaryDirectory() as d:
    train_model([sample], d + "/m", model_config=ModelConfig(classes=sample.class_names), config=cfg, callbacks=[clock])
steps = [b - a for a, b in zip(clock.t[warmup:], clock.t[warmup + 1:])]
out = {"s_per_step": statistics.median(steps), "min": min(steps), "max": max(steps), "n": len(steps),
       "peak_rss_mib": peak_rss_mib()}
if device.startswith("cuda"):
    out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["gpu"] = torch.cuda.get_device_name()
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick_flag(parser)
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 6; --quick 2)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    args = parser.parse_args()
    import torch

    timed = args.steps or (2 if args.quick else 6)
    warmup = 1 if args.quick else 2
    configs: list[tuple[str, str, str, bool]] = []
    if args.device in ("cpu", "all"):
        from fiji_emseg.engine.models.device import native_cpu_bf16

        configs += [("cpu", "cpu", "off", False), ("cpu", "cpu", "off", True)]
        if native_cpu_bf16():
            configs.append(("cpu", "cpu", "bf16", True))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            configs += [("cuda", "cuda", a, cl) for a, cl in (("off", False), ("off", True), ("bf16", True), ("fp16", True))]
        elif args.device == "cuda":
            print("no CUDA GPU here; nothing to measure on the GPU")
            return 0
    print(f"default model (2D residual U-Net, depth 5, 32 filters, 8.1 M parameters), batch 8 of 256x256; "
          f"{warmup} warm-up + {timed} timed steps per configuration, each in a fresh process")
    results = []
    for group, device, amp, cl in configs:
        r = run_child(CHILD, [device, amp, "1" if cl else "0", str(warmup), str(timed)], timeout=3600)
        r.update(device=device, amp=amp, channels_last=cl)
        results.append(r)
        label = f"{device} {'fp32' if amp == 'off' else amp}{' channels_last' if cl else ' NCHW'}"
        extra = f", peak GPU {r['peak_gpu_mib']:.0f} MiB on {r['gpu']}" if "peak_gpu_mib" in r else ""
        print(f"  {label:28s} {r['s_per_step']:.3f} s/step (min {r['min']:.3f}, max {r['max']:.3f}); "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB{extra}", flush=True)
    print("ratios (speed-up against the first configuration of the same device, same run):")
    for dev in ("cpu", "cuda"):
        rows = [r for r in results if r["device"] == dev]
        for r in rows[1:]:
            print(f"  {dev} {r['amp']}{' channels_last' if r['channels_last'] else ''}: "
                  f"{rows[0]['s_per_step'] / r['s_per_step']:.2f}x")
    cpu = [r for r in results if r["device"] == "cpu" and r["channels_last"]]
    if cpu:
        default = cpu[-1]  # bf16 where the CPU has bf16 units, else fp32 channels_last
        s = default["s_per_step"]
        name = "fp32" if default["amp"] == "off" else default["amp"]
        print(f"engine default on this CPU ({name} channels_last) against DeepSCEM on these CPUs "
              f"({DEEPSCEM_CPU_S_PER_STEP} s/step, TensorFlow fp32, FIELD_NOTES): "
              f"{DEEPSCEM_CPU_S_PER_STEP / s:.2f}x (>1 = faster per step)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
