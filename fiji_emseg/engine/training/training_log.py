"""The per-epoch training log, written beside the model as CSV and as a PNG plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.files import atomic_path, atomic_write_text

__all__ = ["LOG_NAME", "PLOT_NAME", "write_log_csv", "read_log_csv", "plot_training_curves", "progress_on_disk"]

LOG_NAME = "training_log.csv"
PLOT_NAME = "training_curves.png"


def write_log_csv(path: str | Path, history: Sequence[dict[str, Any]]) -> Path:
    """Rewrite the whole (small) log atomically, so a kill never leaves a torn line."""
    columns: list[str] = []
    for row in history:
        for k in row:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue(), overwrite=True)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def read_log_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def progress_on_disk(folder: str | Path) -> tuple[int, int | None]:
    """(epochs completed, last epoch whose weights were saved as best) from ``training_log.csv``.

    config.json of a killed run may lag behind by an epoch; the log is rewritten atomically at
    every epoch end, after the weights, so it is the record of what really is on disk.
    """
    try:
        rows = read_log_csv(Path(folder) / LOG_NAME)
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0, None
    epochs, best = 0, None
    for row in rows:
        try:
            e = int(row.get("epoch") or 0)
        except ValueError:
            continue
        epochs = max(epochs, e)
        if (row.get("best") or "").strip() == "1":
            best = e
    return epochs, best


def plot_training_curves(path: str | Path, history: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Loss and validation loss, per-class validation F1, and learning rate against epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(11, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_f1, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["loss"] for r in history], label="training", marker=".")
    if any(r.get("val_loss") is not None for r in history):
        ax_loss.plot(epochs, [r.get("val_loss") for r in history], label="validation", marker=".")
    best = [int(r["epoch"]) for r in history if r.get("best")]
    for ax in (ax_loss, ax_f1):
        if best:
            ax.axvline(best[-1], color="0.6", linestyle="--", linewidth=1, label=f"best (epoch {best[-1]})")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(fontsize=8)
    f1_cols = [k for k in history[0] if k.startswith("val_f1_") and k != "val_f1_mean"] if history else []
    for k in f1_cols:
        ax_f1.plot(epochs, [r.get(k) for r in history], label=k[len("val_f1_"):], marker=".")
    ax_f1.set(xlabel="epoch", ylabel="F1", title="validation F1", ylim=(0, 1.02))
    if f1_cols:
        ax_f1.legend(fontsize=8)
    ax_lr.plot(epochs, [r["lr"] for r in history], marker=".")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
