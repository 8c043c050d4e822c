"""Inference backends behind one interface: one adapter per weight format (bioimageio-style).

- :class:`OnnxRuntimeBackend` runs an exported ``.onnx`` file: CPU with intra-op threads sized
  to the machine, or the CUDA provider (cuDNN algorithm search, I/O binding, optional fp16
  model) when ``onnxruntime-gpu`` and matching CUDA libraries are installed.
- :class:`TorchBackend` runs the PyTorch weights themselves: on a CUDA GPU with bf16/fp16
  autocast and channels_last (optionally ``torch.compile``), or on the CPU. Many GPU machines
  have a CUDA build of PyTorch but no matching onnxruntime-gpu; this backend covers them.

Every backend processes batches of one fixed tile shape per session (kernels are chosen once)
and returns float32 probabilities.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import ConfigError, EmsegWarning, ModelFileError

__all__ = [
    "Backend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "TorchScriptBackend",
    "cpu_threads",
    "ort_cuda_available",
    "torch_cuda_available",
]


class Backend(Protocol):
    name: str
    description: str
    device: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C_in, [Z,] Y, X) float32 → (N, K, [Z,] Y, X) float32 probabilities."""


def cpu_threads() -> int:
    """Threads for CPU inference: the CPUs this process may use (cgroup/affinity aware)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        import psutil

        phys = psutil.cpu_count(logical=False)
        if phys:  # hyper-threads do not help convolution-bound work
            n = min(n, phys)
    except Exception:  # psutil cannot read the topology on some systems
        pass
    return max(1, n)


def ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class OnnxRuntimeBackend:
    """ONNX Runtime session over one ONNX file."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        want_cuda = device.startswith("cuda")
        if want_cuda:
            dev_id = int(device.split(":")[1]) if ":" in device else 0
            providers: list[Any] = [
                ("CUDAExecutionProvider", {
                    "device_id": dev_id,
                    "cudnn_conv_algo_search": "EXHAUSTIVE",  # fixed tile shape: search once, reuse
                    "cudnn_conv_use_max_workspace": "1",
                    "do_copy_in_default_stream": "1",
                }),
                "CPUExecutionProvider",
            ]
        else:
            so.intra_op_num_threads = threads or cpu_threads()
            so.inter_op_num_threads = 1
            # The memory-pattern planner grows the arena on the second call (2.1 GB vs 1.5 GB peak for
            # the default model on 1024² tiles) without making CPU inference faster.
            so.enable_mem_pattern = False
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:
            raise ModelFileError(f"ONNX Runtime cannot load {self.path} ({exc}); export the model again") from exc
        active = self.session.get_providers()
        self.on_gpu = "CUDAExecutionProvider" in active
        if want_cuda and not self.on_gpu:
            raise ConfigError(
                "CUDA was requested but ONNX Runtime fell back to the CPU: the CUDA execution provider could not start "
                f"(available providers: {', '.join(ort.get_available_providers())}). Install onnxruntime-gpu built "
                "for your CUDA/cuDNN version, use --backend torch with a CUDA build of PyTorch, or use --device cpu")
        self.device = device if self.on_gpu else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._binding: Any = None
        self._bound_shape: tuple[int, ...] | None = None
        threads_txt = "" if self.on_gpu else f", {so.intra_op_num_threads} threads"
        self.description = f"ONNX Runtime {ort.__version__} ({active[0]}{threads_txt}) on {self.path.name}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.on_gpu:
            return self.session.run([self.output_name], {self.input_name: batch})[0]  # type: ignore[no-any-return]
        return self._run_bound(batch)

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        """I/O binding: the input is copied to the GPU once, the output is written in place."""
        import onnxruntime as ort

        if self._binding is None or self._bound_shape != batch.shape:
            self._binding = self.session.io_binding()
            self._bound_shape = batch.shape
        binding = self._binding
        x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        binding.bind_ortvalue_input(self.input_name, x)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]  # type: ignore[no-any-return]


class TorchBackend:
    """The PyTorch module itself, wrapped to return probabilities."""

    name = "torch"

    def __init__(self, module: Any, output: str, dims: int, device: str = "cpu", precision: str = "auto",
                 compile: bool = False, threads: int | None = None) -> None:
        import torch

        from ..models.unet import ProbabilityHead

        self.torch = torch
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but PyTorch sees no GPU; use --device cpu or install a CUDA build of PyTorch")
        if threads and dev.type == "cpu":
            torch.set_num_threads(int(threads))
        self.dev = dev
        self.dims = dims
        net = ProbabilityHead(module, output).eval().to(dev)
        from ..models.device import choose_device, native_cpu_bf16

        modes = {"auto": "auto", "fp32": "off", "bf16": "bf16", "fp16": "fp16"}
        if precision not in modes:
            raise ConfigError(f"precision {precision!r} is not available with the torch backend; use auto, fp32, bf16 or fp16")
        # Training's rules for mixed precision and memory layout: bf16 on GPUs and on CPUs with bf16
        # units; channels_last on GPUs and for 2D models on CPUs (3.5 s vs 5.1 s per 1024² slice).
        self.choice = choose_device(str(dev), modes[precision], dims=dims)
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.choice.amp_dtype]
        if dev.type == "cpu" and (precision == "fp16" or (precision == "bf16" and not native_cpu_bf16())):
            warnings.warn(f"this CPU has no {precision} units, so {precision} is slower than fp32; using it as asked",
                          EmsegWarning, stacklevel=2)
        self.precision = precision
        self.channels_last = self.choice.channels_last
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
        if compile:
            net = torch.compile(net, dynamic=False)
        self.net = net
        self.device = str(dev)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        self.description = f"PyTorch {torch.__version__} on {name} ({precision}{', channels_last' if self.channels_last else ''}{', compiled' if compile else ''})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.dev.type == "cuda":
            x = x.pin_memory().to(self.dev, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last if self.dims == 2 else torch.channels_last_3d)
        with torch.inference_mode(), self.choice.autocast():
            return self.net(x).float().cpu().numpy()  # type: ignore[no-any-return]


class TorchScriptBackend:
    """A TorchScript module (e.g. from a bioimage.io package) that already returns probabilities."""

    name = "torchscript"

    def __init__(self, path: str | Path, dims: int, device: str = "cpu", precision: str = "auto",
                 threads: int | None = None) -> None:
        import torch

        if precision not in ("auto", "fp32"):
            raise ConfigError(f"TorchScript weights run in fp32; precision {precision!r} needs a fiji-emseg model folder")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but PyTorch sees no GPU; use --device cpu or install a CUDA build of PyTorch")
        if threads and dev.type == "cpu":
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        try:
            self.net = torch.jit.load(str(self.path), map_location=dev).eval()
        except Exception as exc:
            raise ModelFileError(f"PyTorch cannot load the TorchScript file {self.path.name} ({exc}); the package is damaged") from exc
        self.torch = torch
        self.dev = dev
        self.dims = dims
        self.precision = "fp32"
        self.device = str(dev)
        self.description = f"PyTorch {torch.__version__} TorchScript on {'GPU' if dev.type == 'cuda' else 'CPU'} ({self.path.name})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.dev)
        with self.torch.inference_mode():
            return self.net(x).float().cpu().numpy()  # type: ignore[no-any-return]
