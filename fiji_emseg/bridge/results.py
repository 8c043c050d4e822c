"""pandas DataFrames <-> ImageJ1 ResultsTables, and showing them in a window named for the run.

Cells go over one by one with ``setValue(String, int, …)``, which every ImageJ 1.x has
(``setValues(String, double[])`` is missing in 1.53f, Fiji 2.3.0); columns come back whole
(``getColumn``). A non-default DataFrame index becomes the row
labels (ImageJ's "Label" column) and comes back as the index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .awt import run_on_edt
from .jvm import ensure_jvm, is_headless, jclass

__all__ = ["dataframe_to_table", "find_table", "show_table", "table_to_dataframe"]

LABEL = "Label"


def _uses_index(df: pd.DataFrame) -> bool:
    idx = df.index
    return not (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def dataframe_to_table(df: pd.DataFrame, decimals: int | None = 4) -> Any:
    """A new ``ij.measure.ResultsTable`` with the DataFrame's rows, columns and (non-default) index.

    Numbers (ints, floats, bools) become ImageJ's doubles; anything else is stored as text, with
    missing values as empty cells. ``decimals`` sets the displayed precision (stored values keep
    full double precision).
    """
    ensure_jvm()
    rt = jclass("ij.measure.ResultsTable")()
    if decimals is not None:
        rt.setPrecision(int(decimals))
    n = len(df)
    if n == 0:
        return rt
    for name in df.columns:
        col = df[name]
        heading = str(name)
        if _is_numeric(col):
            values = col.to_numpy(dtype=np.float64, na_value=np.nan).tolist()
            for row, value in enumerate(values):
                rt.setValue(heading, row, float(value))
        else:
            for row, value in enumerate(col.tolist()):
                rt.setValue(heading, row, "" if value is None or (isinstance(value, float) and np.isnan(value))
                            else str(value))
    if _uses_index(df):
        for row, label in enumerate(df.index.tolist()):
            rt.setLabel(str(label), row)
    return rt


def table_to_dataframe(rt: Any) -> pd.DataFrame:
    """A DataFrame from a ResultsTable: numeric columns as float64, text columns as str, labels as index."""
    ensure_jvm()
    n = int(rt.size())
    data: dict[str, Any] = {}
    index = None
    for heading in (str(h) for h in rt.getHeadings()):
        if heading == LABEL:
            index = pd.Index([str(rt.getLabel(i)) for i in range(n)], name=LABEL)
            continue
        numbers = np.array(rt.getColumn(heading), dtype=np.float64)
        missing = np.isnan(numbers)
        if missing.any():
            texts = [str(s) for s in rt.getColumnAsStrings(heading)]
            if any(texts[i] not in ("NaN", "") for i in np.flatnonzero(missing)):
                data[heading] = texts
                continue
        data[heading] = numbers
    return pd.DataFrame(data, index=index if index is not None else pd.RangeIndex(n))


def show_table(df: pd.DataFrame, title: str, decimals: int | None = 4) -> Any:
    """Build the ResultsTable and, when a display exists, show it in a window called ``title``.

    A window with the same title is reused (ImageJ replaces its contents), so each run gets one
    window. Returns the table; headless it is only returned (save it with ``rt.save(path)``).
    """
    rt = dataframe_to_table(df, decimals)
    if not is_headless():
        run_on_edt(lambda: rt.show(title), wait=True)
    return rt


def find_table(title: str) -> Any | None:
    """The ResultsTable shown in the window called ``title``, or None."""
    ensure_jvm()
    return jclass("ij.measure.ResultsTable").getResultsTable(title)
