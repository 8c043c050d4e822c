"""DataFrame <-> ResultsTable, checked cell by cell in the real ImageJ1 table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from bridge_fixtures import drain_edt, ij1, imagej_app, needs_display, wait_for  # noqa: F401

from fiji_emseg.bridge import results
from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.bridge.results import (
    dataframe_to_table,
    find_table,
    show_table,
    table_to_dataframe,
)

pytestmark = pytest.mark.imagej


def _metrics() -> pd.DataFrame:
    return pd.DataFrame(
        {"class": ["mito", "er", "memb µm²"], "F1": [0.9512345678901, 0.709, float("nan")],
         "objects": [12, 0, 7], "detected": [True, False, True], "volume (µm³)": [1.25e-3, -2.0, 1e300]},
        index=pd.Index(["slice 1-10", "slice 11-20", "all"], name="range"))


def test_cells_are_in_the_imagej_table(ij1) -> None:  # noqa: F811
    df = _metrics()
    rt = dataframe_to_table(df)
    assert rt.size() == 3
    assert [str(h) for h in rt.getHeadings()] == ["Label", "class", "F1", "objects", "detected", "volume (µm³)"]
    for row in range(3):
        assert str(rt.getLabel(row)) == df.index[row]
        assert str(rt.getStringValue("class", row)) == df["class"].iloc[row]
        assert rt.getValue("objects", row) == float(df["objects"].iloc[row])
        assert rt.getValue("detected", row) == float(df["detected"].iloc[row])
        assert rt.getValue("volume (µm³)", row) == df["volume (µm³)"].iloc[row]  # full double precision
    assert rt.getValue("F1", 0) == 0.9512345678901
    assert math.isnan(rt.getValue("F1", 2))


def test_round_trip(ij1) -> None:  # noqa: F811
    df = _metrics()
    back = table_to_dataframe(dataframe_to_table(df))
    expected = df.astype({"objects": float, "detected": float})
    expected.index = expected.index.rename("Label")
    pd.testing.assert_frame_equal(back, expected)


def test_default_index_means_no_labels_and_text_with_missing_values(ij1) -> None:  # noqa: F811
    df = pd.DataFrame({"name": ["a", None, "c"], "n": [1.0, 2.0, 3.0]})
    rt = dataframe_to_table(df)
    assert "Label" not in [str(h) for h in rt.getHeadings()]
    assert [str(rt.getStringValue("name", i)) for i in range(3)] == ["a", "", "c"]
    back = table_to_dataframe(rt)
    assert back["name"].tolist() == ["a", "", "c"] and back.index.equals(pd.RangeIndex(3))


def test_numeric_column_with_missing_values_stays_numeric(ij1) -> None:  # noqa: F811
    back = table_to_dataframe(dataframe_to_table(pd.DataFrame({"x": [np.nan, 1.5, np.nan]})))
    assert back["x"].dtype == np.float64
    assert np.isnan(back["x"][0]) and back["x"][1] == 1.5


def test_empty_frame_gives_empty_table(ij1) -> None:  # noqa: F811
    rt = dataframe_to_table(pd.DataFrame({"a": []}))
    assert rt.size() == 0
    assert table_to_dataframe(rt).empty


def test_table_made_by_imagej_is_read(ij1) -> None:  # noqa: F811
    rt = jclass("ij.measure.ResultsTable")()
    for i in range(3):
        rt.incrementCounter()
        rt.addLabel(f"roi{i}")
        rt.addValue("Area", 10.0 * i)
        rt.addValue("Kind", "big" if i else "small")
    df = table_to_dataframe(rt)
    assert df.index.tolist() == ["roi0", "roi1", "roi2"]
    assert df["Area"].tolist() == [0.0, 10.0, 20.0]
    assert df["Kind"].tolist() == ["small", "big", "big"]


def test_show_table_headless_opens_no_window(ij1, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(results, "is_headless", lambda: True)
    rt = show_table(_metrics(), "emseg headless table test")
    assert rt.size() == 3
    if not jclass("java.awt.GraphicsEnvironment").isHeadless():
        drain_edt()
    assert find_table("emseg headless table test") is None


@needs_display()
@pytest.mark.gui
def test_show_table_opens_a_window_named_for_the_run(imagej_app) -> None:  # noqa: F811
    title = "emseg run 7 metrics"
    show_table(_metrics(), title)
    assert wait_for(lambda: jclass("ij.WindowManager").getWindow(title) is not None)
    shown = find_table(title)
    assert shown is not None and shown.size() == 3
    assert str(shown.getStringValue("class", 1)) == "er"
    # a second run with the same title replaces the contents instead of opening another window
    show_table(_metrics().iloc[:1], title)
    assert wait_for(lambda: find_table(title).size() == 1)
    titles = [str(t) for t in jclass("ij.WindowManager").getNonImageTitles()]
    assert titles.count(title) == 1
