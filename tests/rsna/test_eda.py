"""medflow.rsna.eda: every plot of PLOTS as one PNG, from the tables the rule reads, with no patient id in sight."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from medflow.ingest import rsna as ingest
from medflow.rsna import eda, metadata

matplotlib.use("Agg")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tables(rsna_raw, tmp_path_factory):
    """(metadata table, manifest) of the tiny download, read back from CSV as the rule reads them."""
    d = tmp_path_factory.mktemp("rsna_eda")
    manifest = ingest.discover(rsna_raw)
    manifest.to_csv(d / "manifest.csv", index=False)
    metadata.write_table(d / "manifest.csv", d / "table.csv", d / "decisions.json")
    return metadata.read_table(d / "table.csv"), pd.read_csv(d / "manifest.csv", dtype={"patientId": str})


@pytest.fixture
def figure_text(monkeypatch):
    """Every string drawn in each figure (titles, axis and tick labels, legends, annotations), by PNG name."""
    texts = {}
    real = eda._save

    def spy(fig, path):
        fig.canvas.draw()  # tick labels are filled in at draw time
        texts[path.stem] = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
        real(fig, path)

    monkeypatch.setattr(eda, "_save", spy)
    return texts


def check_pngs(out, paths):
    assert paths == [out / f"{name}.png" for name in eda.PLOTS]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in eda.PLOTS), "nothing else"
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, p.name


def test_every_plot_is_written_as_a_png_and_nothing_else(tables, tmp_path):
    table, manifest = tables
    out = tmp_path / "eda"
    check_pngs(out, eda.write_plots(table, manifest, out))


def test_missing_ages_spacing_sex_and_view_still_plot(tables, tmp_path, figure_text):
    """Real headers lack these (see test_metadata.py): the plots show them as unknown instead of failing."""
    table, manifest = tables
    t = table.copy()
    t.loc[t.index[:5], ["age_years"]] = np.nan
    t.loc[t.index[:5], "age_status"] = "missing"
    t.loc[t.index[3:8], ["pixel_spacing_row", "pixel_spacing_col"]] = np.nan
    t.loc[t.index[3:8], "spacing_status"] = "missing"
    t.loc[t.index[0], ["sex", "view_position"]] = ""
    out = tmp_path / "eda"
    check_pngs(out, eda.write_plots(t, manifest, out))
    assert "Age by class (5 unknown ages not shown)" in figure_text["age_by_class"]
    assert "none" in figure_text["pixel_spacing"], "missing spacing is its own bar"
    assert "unknown" in figure_text["view_position"] and any(
        s.startswith("unknown\n") for s in figure_text["age_by_sex"]
    )


def test_no_patient_identifier_appears_in_any_figure(tables, tmp_path, figure_text):
    table, manifest = tables
    eda.write_plots(table, manifest, tmp_path)
    assert set(figure_text) == set(eda.PLOTS)
    # The spy sees the figures' words, so an id among them would be seen too.
    assert "View position" in figure_text["view_position"] and "Target 1 (opacity)" in figure_text["samples"]
    words = "\n".join(s for strings in figure_text.values() for s in strings)
    # A UUID patientId, or its first block (enough to find the patient), would identify the image.
    leaks = [pid for pid in manifest["patientId"] if pid in words or pid.split("-")[0] in words]
    assert not leaks, leaks
