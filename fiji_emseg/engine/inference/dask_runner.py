"""Running a block-wise prediction in this process or on a Dask cluster.

Why Dask (``dask.distributed``): it already does what a cluster runner must do: schedule tasks
on local processes, on ``dask worker`` processes of several machines or on SLURM through
dask-jobqueue, restart dead workers and recompute their tasks elsewhere, and show a dashboard.
Our tasks are idempotent (a block rewrites the same chunks, then its marker), so recomputing a
block that a dead worker may half have written is safe.

Each worker keeps one :class:`~fiji_emseg.engine.inference.blockwise.BlockContext` per job (the model
loaded once, the input and output stores opened once) in a :class:`PredictorPlugin`, a Dask
worker plugin: a worker that the nanny restarts gets the plugin again and loads the model on
its first block.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from ...errors import ConfigError, EmsegError
from .blockwise import (
    BlockContext,
    BlockJob,
    BlockwiseConfig,
    finish_job,
    pending,
    prepare_job,
    run_block,
    run_pyramid_block,
)

__all__ = ["BlockwiseResult", "PredictorPlugin", "connect", "predict_blockwise"]

PLUGIN_NAME = "fiji-emseg-predictor"

#: Called after each block: (blocks done, blocks total, voxels done this run).
ProgressFn = Callable[[int, int, int], None]


@dataclass
class BlockwiseResult:
    """What a block-wise run did: the output store and a summary."""

    output: Path
    shape: tuple[int, int, int]
    blocks: int
    computed: int
    skipped: int
    levels: int
    seconds: float
    workers: int
    dashboard: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def voxels_per_second(self) -> float:
        z, y, x = self.shape
        share = self.computed / max(self.blocks, 1)
        return z * y * x * share / max(self.seconds, 1e-9)

    def summary(self) -> str:
        z, y, x = self.shape
        what = (f"computed {self.computed} of {self.blocks} blocks" + (f" ({self.skipped} already done)" if self.skipped else ""))
        return (f"predicted {z}×{y}×{x} voxels into {self.output}: {what}, {self.levels} pyramid levels, "
                f"{self.seconds:.1f} s ({self.voxels_per_second / 1e6:.2f} M voxels/s) on {self.workers} worker(s)")


# ----------------------------------------------------------------------------- worker side


class PredictorPlugin(WorkerPlugin):
    """A Dask worker plugin holding each worker's open job contexts (model loaded once)."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self._contexts: dict[str, BlockContext] = {}
        self._lock = threading.Lock()

    def setup(self, worker: Any = None) -> None:
        self._contexts = {}
        self._lock = threading.Lock()

    def teardown(self, worker: Any = None) -> None:
        for ctx in self._contexts.values():
            ctx.close()
        self._contexts.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def predictor(self, model: str, config: Any, trust_custom_code: bool) -> Any:
        """One Predictor per (model, settings) on this worker, loaded on first use and kept."""
        from .predictor import Predictor

        key = f"predictor:{model}:{config!r}:{trust_custom_code}"
        with self._lock:
            p = self._contexts.get(key)
            if p is None:
                p = Predictor(model, config, trust_custom_code=trust_custom_code)
                self._contexts[key] = p  # type: ignore[assignment]
            return p

    def context(self, job: BlockJob) -> BlockContext:
        with self._lock:
            ctx = self._contexts.get(job.token)
            if ctx is None:
                ctx = BlockContext.open(job)
                self._contexts[job.token] = ctx
            return ctx


def _worker_plugin() -> PredictorPlugin:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None:  # registered late or lost: keep one on the worker object
        plugin = PredictorPlugin()
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin  # type: ignore[no-any-return]


def dask_block(job: BlockJob, index: tuple[int, int, int]) -> int:
    """A Dask task: one level-0 block on this worker's cached context."""
    return run_block(_worker_plugin().context(job), index)


def dask_pyramid_block(job: BlockJob, level: int, index: tuple[int, int, int]) -> int:
    return run_pyramid_block(job, _worker_plugin().context(job).arrays, level, index)


def dask_stack(model: str, config: Any, path: str, output_dir: str, overwrite: bool, trust_custom_code: bool) -> dict[str, Any]:
    """A Dask task: one whole stack with this worker's cached predictor (batch of many stacks)."""
    result = _worker_plugin().predictor(model, config, trust_custom_code).predict(path, output_dir, overwrite=overwrite)
    return {"path": path, "summary": result.summary(), "voxels": int(np.prod(result.shape)),
            "files": {f"{k} {c}".strip(): str(f) for (k, c), f in result.files.items()}}


def predict_stacks(model: str | Path, inputs: list[Path], output_dir: str | Path, config: Any = None, *, workers: int = 0,
                   scheduler: str | None = None, overwrite: bool = False, trust_custom_code: bool = False,
                   progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Predict many stacks in parallel on Dask, one task per stack (TIFF outputs as ``Predictor.predict``)."""
    from dataclasses import replace

    from distributed import as_completed

    from ..data.files import check_writable
    from .prediction_output import OutputSpec, output_file_names
    from .predictor import PredictConfig, Predictor

    cfg = config or PredictConfig()
    say = log or (lambda s: None)
    if workers and cfg.threads is None:
        cfg = replace(cfg, threads=_default_threads(workers))
    names = [p.name.split(".")[0] for p in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"several inputs are named {dupes}; their results would overwrite each other: rename them")
    with Predictor(model, cfg, trust_custom_code=trust_custom_code) as p:  # checks the model and options once, here
        spec = OutputSpec(p.model_config.classes, p.model_config.output, tuple(cfg.outputs), p.thresholds(),
                          cfg.probability_dtype, cfg.cleanup)
    for name in names if cfg.storage == "tiff" else ():  # every target, before any work
        for fname in output_file_names(name, spec).values():
            check_writable(Path(output_dir) / fname, overwrite)
    client, cluster = connect(scheduler, workers, cfg.threads)
    try:
        say(f"Dask dashboard: {client.dashboard_link}")
        client.register_plugin(PredictorPlugin(), name=PLUGIN_NAME)
        futures = [client.submit(dask_stack, str(model), cfg, str(path), str(output_dir), overwrite, trust_custom_code,
                                 pure=False) for path in inputs]
        out, voxels = [], 0
        try:
            for n, fut in enumerate(as_completed(futures), start=1):
                r = fut.result()
                out.append(r)
                voxels += r["voxels"]
                if progress is not None:
                    progress(n, len(inputs), voxels)
        except BaseException:
            client.cancel(futures)
            raise
        return sorted(out, key=lambda r: str(r["path"]))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _worker_pids() -> int:
    return os.getpid()


# ----------------------------------------------------------------------------- driver side


def connect(scheduler: str | None, workers: int, threads: int | None = None, timeout: float = 5.0) -> tuple[Any, Any]:
    """A Dask client: to *scheduler* (an address), else to a new local cluster of *workers* processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"no Dask scheduler answers at {scheduler} (after {timeout:g} s); start one with "
                              "'dask scheduler' or check the address (tcp://HOST:8786)") from exc
        return client, None
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    env = {"PYTHONPATH": os.pathsep.join(p for p in [_package_root(), os.environ.get("PYTHONPATH", "")] if p),
           "OMP_NUM_THREADS": str(threads or 1)}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           env=env, silence_logs=40)
    return Client(cluster), cluster


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def predict_blockwise(model: str | Path, image: str | Path, output: str | Path, config: Any = None,
                      blockwise: BlockwiseConfig | None = None, *, workers: int = 0, scheduler: str | None = None,
                      overwrite: bool = False, trust_custom_code: bool = False, progress: ProgressFn | None = None,
                      max_blocks: int | None = None, log: Callable[[str], None] | None = None) -> BlockwiseResult:
    """Predict *image* block-wise into the OME-Zarr store *output*; resumes a stopped run of the same settings.

    ``workers=0`` and no *scheduler*: in this process. ``workers=N``: a local Dask cluster of N
    worker processes. ``scheduler="tcp://host:8786"``: an existing cluster. ``max_blocks`` stops
    after that many blocks (for tests and trial runs; the run stays resumable).
    """
    from dataclasses import replace

    from .predictor import PredictConfig, Predictor

    cfg = config or PredictConfig()
    bw = blockwise or BlockwiseConfig()
    say = log or (lambda s: None)
    t0 = time.monotonic()
    n_proc = workers if not scheduler else 0
    if n_proc and cfg.threads is None:
        cfg = replace(cfg, threads=_default_threads(n_proc))
    client = cluster = None
    if scheduler or workers:  # first, so that a dead scheduler address fails at once, before any output
        client, cluster = connect(scheduler, workers, cfg.threads)
    try:
        with Predictor(model, cfg, trust_custom_code=trust_custom_code) as predictor:
            job, record = prepare_job(predictor, model, image, output, bw, overwrite=overwrite,
                                      trust_custom_code=trust_custom_code)
            if record.get("complete"):
                say(f"{output} is already complete; nothing to do")
                return BlockwiseResult(Path(output), job.shape, job.n_blocks, 0, job.n_blocks, len(job.levels),
                                       time.monotonic() - t0, 0, None, record)
            todo = pending(job, 0)
            skipped = job.n_blocks - len(todo)
            if skipped:
                say(f"resuming {output}: {skipped} of {job.n_blocks} blocks already written")
            if max_blocks is not None:
                todo = todo[:max_blocks]
            partial = max_blocks is not None and len(todo) < job.n_blocks - skipped
            if client is not None:
                computed, n_workers, dash = _run_dask(client, job, todo, bool(scheduler), workers, progress, say,
                                                      pyramid=not partial)
            else:
                computed, n_workers, dash = _run_here(job, predictor, todo, progress), 1, None
                if not partial:
                    _pyramid_here(job, predictor)
            if not partial:
                record = finish_job(job, record)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return BlockwiseResult(Path(output), job.shape, job.n_blocks, computed, skipped, len(job.levels),
                           time.monotonic() - t0, n_workers, dash, record)


def _run_here(job: BlockJob, predictor: Any, todo: list[tuple[int, int, int]], progress: ProgressFn | None) -> int:
    ctx = BlockContext.open(job, predictor)
    try:
        voxels = 0
        for n, index in enumerate(todo, start=1):
            voxels += run_block(ctx, index)
            if progress is not None:
                progress(n, len(todo), voxels)
        return len(todo)
    finally:
        ctx.close()


def _pyramid_here(job: BlockJob, predictor: Any) -> None:
    ctx = BlockContext.open(job, predictor)
    try:
        for level in range(1, len(job.levels)):
            for index in pending(job, level):
                run_pyramid_block(job, ctx.arrays, level, index)
    finally:
        ctx.close()


def _run_dask(client: Any, job: BlockJob, todo: list[tuple[int, int, int]], external: bool, workers: int,
              progress: ProgressFn | None, say: Callable[[str], None], pyramid: bool = True) -> tuple[int, int, str | None]:
    from distributed import as_completed

    dash = client.dashboard_link
    say(f"Dask dashboard: {dash}")
    client.register_plugin(PredictorPlugin(), name=PLUGIN_NAME)
    n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) if external else workers
    futures = [client.submit(dask_block, job, idx, key=f"emseg-{job.token}-0-{'.'.join(map(str, idx))}", pure=False)
               for idx in todo]
    voxels = 0
    try:
        for n, fut in enumerate(as_completed(futures), start=1):
            voxels += _result(fut)
            if progress is not None:
                progress(n, len(todo), voxels)
        for level in range(1, len(job.levels) if pyramid else 1):
            pyr = [client.submit(dask_pyramid_block, job, level, idx, pure=False,
                                 key=f"emseg-{job.token}-{level}-{'.'.join(map(str, idx))}") for idx in pending(job, level)]
            for fut in as_completed(pyr):
                _result(fut)
    except BaseException:
        client.cancel(futures)
        raise
    return len(todo), n_workers, dash


def _result(fut: Any) -> int:
    try:
        return int(fut.result())
    except EmsegError:
        raise
    except Exception as exc:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            raise EmsegError(f"a block kept killing its workers ({exc}); check worker memory (each needs about one "
                             "block of float32 probabilities plus the model) and rerun to resume") from exc
        raise


def tqdm_progress(disable: bool = False, unit: str = "block") -> tuple[ProgressFn, Callable[[], None]]:
    """A tqdm bar over blocks with M voxels/s, for the command line."""
    from tqdm import tqdm

    bar: Any = None
    t0 = time.monotonic()

    def update(done: int, total: int, voxels: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, desc=f"{unit}s", file=sys.stderr, disable=disable, dynamic_ncols=True)
        bar.n = done
        bar.set_postfix_str(f"{voxels / max(time.monotonic() - t0, 1e-9) / 1e6:.2f} M voxels/s", refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close
