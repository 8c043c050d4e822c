"""``emseg info``: describe a model folder, an exported ONNX file or a bioimage.io package.

Besides the model itself it lists the weight formats present (and whether each is current) and
which one prediction would use on this machine, with the reason (the order of
:mod:`fiji_emseg.engine.inference.format_choice`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.models.model_store import ModelInfo

HELP = "describe a model (classes, architecture, normalisation, training)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("info", help=HELP, description=HELP)
    p.add_argument("model", metavar="MODEL", help="model folder, .onnx file or bioimage.io package (.zip / rdf.yaml)")
    p.add_argument("--json", action="store_true", help="print the full description as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.inference.format_choice import plan_candidates
    from ..engine.models.formats import describe_formats, open_model_source

    path = Path(args.model)
    source = open_model_source(path)
    try:
        info = source.info
        formats = describe_formats(source)
        candidates = plan_candidates(source)
    finally:
        source.close()
    if args.json:
        d = info.to_dict()
        d["weight_formats"] = {f.format: {"present": f.present, "current": f.current, "note": f.note} for f in formats}
        d["prediction_would_use"] = [{"runtime": c.runtime, "device": c.device, "precision": c.precision,
                                      "reason": c.reason} for c in candidates]
        print(json.dumps(d, indent=2))
        return 0
    m = info.model
    rf = info.receptive_field
    tr = info.training
    lines = [
        f"model:          {m.name} ({m.architecture}, {m.kind}, depth {m.depth}, {m.filters} filters, "
        f"{'residual' if m.residual else 'plain'}, {m.norm} norm)",
        f"classes:        {', '.join(m.classes)} ({m.output} output)",
        f"normalisation:  {info.normalization.describe()}",
        f"spatial multiple: {m.spatial_multiple[3 - m.dims:]}",
    ]
    if rf is not None:
        lines.append(f"receptive field radius: {rf.radius[3 - m.dims:]} voxels (measured)")
    if tr and tr.get("status") == "training" and path.is_dir():
        lines.extend(_unfinished(path, info))
    elif tr:
        best = tr.get("best_metrics") or {}
        f1 = best.get("val_f1") or {}
        lines.append(f"training:       {tr.get('status', '?')}, {tr.get('epochs_run', '?')} epochs on {tr.get('device', '?')}")
        if best:
            # without keep-best (as when the validation data was trained on) the last epoch is the one kept
            seen = (tr.get("data") or {}).get("validation_trained_on")
            lines.append(f"{'kept epoch' if info.keeps_last_epoch else 'best epoch'}:     {best.get('epoch')} (" + ", ".join(
                f"{k} F1 {v:.3f}" if isinstance(v, (int, float)) else f"{k} F1 -" for k, v in f1.items())
                + (" on validation data it was also trained on: fit, not generalisation" if seen else "") + ")")
        plan = tr.get("plan")
        if isinstance(plan, dict):
            from ..engine.training.planner import TrainingPlan

            lines.append("plan:           " + TrainingPlan.from_dict(plan).describe().replace("\n", "\n                "))
    lines.append("weight formats:")
    for f in formats:
        if f.present:
            state = "current" if f.current else f"not used: {f.note}"
            lines.append(f"  {f.format:<19} {state} - {f.description}")
    if candidates:
        first = candidates[0]
        lines.append(f"prediction uses: {first.runtime} on {first.device} ({first.precision}) - {first.reason}")
        for c in candidates[1:]:
            lines.append(f"  then, if that cannot start: {c.runtime} on {c.device} ({c.precision})")
    for note in source.notes:
        lines.append(f"note: {note}")
    print("\n".join(lines))
    return 0


def _unfinished(folder: Path, info: ModelInfo) -> list[str]:
    """A run that is still going or was killed: report what its files on disk hold."""
    from ..engine.models.model_store import WEIGHTS_NAME
    from ..engine.training.trainer import CHECKPOINT_NAME
    from ..engine.training.training_log import progress_on_disk

    tr = info.training
    logged, best_logged = progress_on_disk(folder)
    epochs = max(logged, int(tr.get("epochs_run") or 0))
    best = best_logged if best_logged is not None else tr.get("best_epoch")
    planned = (tr.get("config") or {}).get("epochs", "?")
    weights = (folder / WEIGHTS_NAME).is_file()
    word = "kept (the last)" if info.keeps_last_epoch else "best"
    best_text = f"{word} saved epoch {best} ({WEIGHTS_NAME})" if weights and best else "no epoch saved yet"
    out = [f"training:       not finished (still running, or interrupted): {epochs} of {planned} epochs done, {best_text}"]
    if (folder / CHECKPOINT_NAME).is_file():
        out.append(f"resume:         emseg train {folder} --resume")
    debris = [f for f in folder.iterdir() if f.name.startswith(".") and ".part" in f.name]
    if debris:
        out.append(f"temporary files: {len(debris)} left by an interrupted write; the next training run into this folder removes them")
    return out
