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
    from ..engine.models.model_store import read_model_info

    path = Path(args.model)
    if path.suffix.lower() == ".onnx":
        from ..engine.models.onnx_metadata import read_onnx_metadata

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
    if tr:
        best = tr.get("best_metrics") or {}
        f1 = best.get("val_f1") or {}
        lines.append(f"training:       {tr.get('status', '?')}, {tr.get('epochs_run', '?')} epochs on {tr.get('device', '?')}")
        if best:
            lines.append(f"best epoch:     {best.get('epoch')} (" + ", ".join(f"{k} F1 {v:.3f}" for k, v in f1.items()) + ")")
        plan = tr.get("plan")
        if isinstance(plan, dict):
            from ..engine.training.planner import TrainingPlan

            lines.append("plan:           " + TrainingPlan.from_dict(plan).describe().replace("\n", "\n                "))
    print("\n".join(lines))
    return 0
