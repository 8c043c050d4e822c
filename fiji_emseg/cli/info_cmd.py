"""``emseg info``: describe a model folder or an exported ONNX file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "describe a model (classes, architecture, normalisation, training)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("info", help=HELP, description=HELP)
    p.add_argument("model", metavar="MODEL", help="model folder or .onnx file")
    p.add_argument("--json", action="store_true", help="print the full description as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.model_store import read_model_info

    path = Path(args.model)
    if path.suffix.lower() == ".onnx":
        from ..export.metadata import read_onnx_metadata

        info = read_onnx_metadata(path).info
    else:
        info = read_model_info(path)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    m = info.model
    rf = info.receptive_field
    tr = info.training
    lines = [
        f"model:          {m.name} ({m.architecture}, {m.dims}D, depth {m.depth}, {m.filters} filters, "
        f"{'residual' if m.residual else 'plain'}, {m.norm} norm)",
        f"classes:        {', '.join(m.classes)} ({m.output} output)",
        f"normalisation:  {info.normalization.describe()}",
        f"spatial multiple: {m.spatial_multiple[3 - m.dims:]}",
    ]
    if rf is not None:
        lines.append(f"receptive field radius: {rf.radius[3 - m.dims:]} voxels (measured)")
    if tr and tr.get("status") == "training" and path.is_dir():
        lines.extend(_unfinished(path, tr))
    elif tr:
        best = tr.get("best_metrics") or {}
        f1 = best.get("val_f1") or {}
        lines.append(f"training:       {tr.get('status', '?')}, {tr.get('epochs_run', '?')} epochs on {tr.get('device', '?')}")
        if best:
            lines.append(f"best epoch:     {best.get('epoch')} (" + ", ".join(
                f"{k} F1 {v:.3f}" if isinstance(v, (int, float)) else f"{k} F1 -" for k, v in f1.items()) + ")")
    print("\n".join(lines))
    return 0


def _unfinished(folder: Path, tr: dict) -> list[str]:  # type: ignore[type-arg]
    """A run that is still going or was killed: report what its files on disk hold."""
    from ..engine.model_store import WEIGHTS_NAME
    from ..engine.trainer import CHECKPOINT_NAME
    from ..engine.training_log import progress_on_disk

    logged, best_logged = progress_on_disk(folder)
    epochs = max(logged, int(tr.get("epochs_run") or 0))
    best = best_logged if best_logged is not None else tr.get("best_epoch")
    planned = (tr.get("config") or {}).get("epochs", "?")
    weights = (folder / WEIGHTS_NAME).is_file()
    best_text = f"best saved epoch {best} ({WEIGHTS_NAME})" if weights and best else "no epoch saved yet"
    out = [f"training:       not finished (still running, or interrupted): {epochs} of {planned} epochs done, {best_text}"]
    if (folder / CHECKPOINT_NAME).is_file():
        out.append(f"resume:         emseg train {folder} --resume")
    debris = [f for f in folder.iterdir() if f.name.startswith(".") and ".part" in f.name]
    if debris:
        out.append(f"temporary files: {len(debris)} left by an interrupted write; the next training run into this folder removes them")
    return out
