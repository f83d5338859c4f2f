"""Preprocessing: windowing, MONOCHROME1, CLAHE, isotropic resampling, resizing, features, the HDF5."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from medflow.errors import InputError
from medflow.ingest import rsna as ingest
from medflow.rsna import metadata
from medflow.rsna import preprocess as pp
from medflow.synthetic.rsna import write_dicom


def test_window_follows_the_dicom_linear_function():
    c, w = 100.0, 51.0
    x = np.array([0, c - 0.5 - (w - 1) / 2, c - 0.5, c - 0.5 + (w - 1) / 2, 1000], np.float32)
    np.testing.assert_allclose(pp.window(x, c, w), [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(pp.window(np.array([99.0, 100.0]), 100, 1), [0, 1])  # width 1: a threshold


def test_window_source_follows_the_mode():
    img = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    header = (300.0, 200.0)
    assert pp.choose_window(img, header, pp.PreprocessConfig(window_mode="header")) == (300.0, 200.0, "header")
    c, w, src = pp.choose_window(img, None, pp.PreprocessConfig(window_mode="header", percentiles=(0, 100)))
    assert src == "percentile" and (c, w) == pytest.approx((500, 1000))
    assert pp.choose_window(img, header, pp.PreprocessConfig(window_mode="fixed", level=40, width=80)) == (
        40,
        80,
        "fixed",
    )
    with pytest.raises(ValueError, match="fixed window needs width"):
        pp.PreprocessConfig(window_mode="fixed", width=0)


def _phantom(rows=60, cols=60):
    y, x = np.mgrid[:rows, :cols]
    return (200 + 3000 * ((y - rows / 2) ** 2 + (x - cols / 2) ** 2 < (rows / 3) ** 2) + 10 * (x % 7)).astype(np.uint16)


def test_monochrome1_is_inverted_to_look_like_monochrome2(tmp_path):
    m2 = _phantom()
    top = 4095
    write_dicom(tmp_path / "m2.dcm", m2, {"BitsStored": 12, "WindowCenter": 1800, "WindowWidth": 3400}, (1,))
    # The same film stored the other way round: low values bright, the window mirrored.
    write_dicom(
        tmp_path / "m1.dcm",
        (top - m2).astype(np.uint16),
        {"BitsStored": 12, "PhotometricInterpretation": "MONOCHROME1", "WindowCenter": top - 1800, "WindowWidth": 3400},
        (2,),
    )
    cfg = pp.PreprocessConfig(size=32)
    a, info_a = pp._one((str(tmp_path / "m2.dcm"), (0.5, 0.5), cfg))
    b, info_b = pp._one((str(tmp_path / "m1.dcm"), (0.5, 0.5), cfg))
    assert info_a["window"] == info_b["window"] == "header"
    assert a.shape == (32, 32) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert a[16, 16] > a[1, 1], "the dense disk is bright in both"
    # Without the inversion the two would be far apart.
    raw_m1 = pp.window((top - m2).astype(np.float32), top - 1800, 3400)
    assert np.abs(raw_m1 - pp.window(m2.astype(np.float32), 1800, 3400)).mean() > 0.3


def test_clahe_keeps_shape_and_range_and_raises_local_contrast():
    rng = np.random.default_rng(0)
    img = (0.45 + 0.05 * rng.random((80, 120))).astype(np.float32)  # a flat, low-contrast image
    out = pp.clahe(img, clip_limit=0.02, tiles=(4, 6))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 3 * img.std()


def test_resampling_makes_pixels_square_from_pixel_spacing():
    # A disk of radius 20 mm sampled with 1.0 mm rows and 0.5 mm columns: 40 x 80 pixels across.
    sr, sc = 1.0, 0.5
    y, x = np.mgrid[:60, :120]
    img = ((((y - 30) * sr) ** 2 + ((x - 60) * sc) ** 2) < 20**2).astype(np.float32)
    out, s = pp.resample_isotropic(img, (sr, sc))
    assert s == 0.5 and out.shape == (120, 120)
    rows, cols = np.nonzero(out > 0.5)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2, "the disk is round again"
    same, s = pp.resample_isotropic(img, None)  # no spacing: square pixels assumed
    assert same is img and s is None


def test_pad_resize_keeps_the_aspect_ratio():
    img = np.ones((30, 60), np.float32)
    out, zoom = pp.pad_resize(img, 20)
    assert out.shape == (20, 20) and zoom == pytest.approx(20 / 60)
    assert out[0].max() < 0.5 and out[10].min() > 0.5, "black bands above and below, the image in the middle"


def test_metadata_features_are_one_hot():
    table = pd.DataFrame(
        {
            "age_years": [10, 25, 85, np.nan, 40],
            "sex": ["M", "F", "", "F", "M"],
            "view_position": ["AP", "PA", "AP", "", "PA"],
        }
    )
    x, names = pp.metadata_features(table, [20, 40, 60, 80])
    assert names == [
        "age_lt20",
        "age_20_40",
        "age_40_60",
        "age_60_80",
        "age_ge80",
        "age_unknown",
        "sex_M",
        "sex_F",
        "view_AP",
        "view_PA",
    ]
    assert x.dtype == np.float32 and x.shape == (5, 10)
    assert [names[i] for i in x[:, :6].argmax(1)] == ["age_lt20", "age_20_40", "age_ge80", "age_unknown", "age_40_60"]
    np.testing.assert_array_equal(x[:, 6:], [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]])


def test_hdf5_holds_every_usable_image_with_its_features(rsna_raw, tmp_path):
    manifest = ingest.discover(rsna_raw)
    table, _ = metadata.build_table(manifest)
    table.loc[3, ["usable", "exclusion"]] = [False, "unsupported transfer syntax (test)"]
    cfg = pp.PreprocessConfig(size=24)
    out = tmp_path / "images.h5"
    summary = pp.write_hdf5(table, manifest, out, cfg, threads=2)
    with h5py.File(out, "r") as h5:
        n = len(table) - 1
        assert h5["image"].shape == (n, 24, 24) and h5["image"].dtype == np.uint8 and h5["image"].chunks == (1, 24, 24)
        ids = [s.decode() for s in h5["patient_id"][:]]
        assert ids == [p for i, p in enumerate(table["patientId"]) if i != 3]
        np.testing.assert_array_equal(h5["target"][:], table["target"].drop(index=3).to_numpy())
        meta = h5["meta"][:]
        names = json.loads(h5.attrs["meta_features"])
        assert meta.shape == (n, len(names)) and (meta.sum(1) == 3).all(), "one age bin, one sex, one view each"
        assert (h5["spacing_mm"][:] > 0).all()
        assert h5.attrs["size"] == 24 and json.loads(h5.attrs["decisions"])
        assert h5["image"][:].std() > 20, "images are not blank"
    assert summary["n_images"] == n and summary["n_excluded_metadata"] == 1
    # Same bytes whether written by one process or two.
    pp.write_hdf5(table, manifest, tmp_path / "serial.h5", cfg, threads=1)
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "serial.h5", "r") as b:
        np.testing.assert_array_equal(a["image"][:], b["image"][:])


def test_nothing_usable_is_an_input_error(rsna_raw, tmp_path):
    manifest = ingest.discover(rsna_raw)
    table, _ = metadata.build_table(manifest)
    table["usable"] = False
    with pytest.raises(InputError, match="no usable image"):
        pp.write_hdf5(table, manifest, tmp_path / "x.h5", pp.PreprocessConfig())
    assert not (tmp_path / "x.h5").exists()


def test_prepare_dicom_gives_the_hdf5_image_and_features_whatever_the_header(tmp_path):
    """One new DICOM through prepare_dicom equals the metadata table (through its CSV) and the HDF5 rows of
    the same file, for header quirks: no age, an implausible age (over max_age_years), no PixelSpacing,
    ImagerPixelSpacing only, anisotropic pixels, a header window, MONOCHROME1, an unknown view."""
    ph = _phantom(48, 40)
    files = {
        "a": (
            ph.astype(np.uint8),
            {"PatientAge": "045Y", "PatientSex": "M", "ViewPosition": "AP", "PixelSpacing": [0.5, 0.4]},
        ),
        "b": (
            ph,
            {"BitsStored": 12, "WindowCenter": 1700, "WindowWidth": 3000, "PatientSex": "F", "ViewPosition": "LL"},
        ),
        "c": (
            (4095 - ph).astype(np.uint16),
            {
                "BitsStored": 12,
                "PhotometricInterpretation": "MONOCHROME1",
                "PatientAge": "095Y",
                "ImagerPixelSpacing": [0.3, 0.3],
            },
        ),
        "d": (
            ph.astype(np.uint8),
            {"PatientAge": "006M", "PatientSex": "O", "ViewPosition": "PA", "PixelSpacing": [0.4, 0.5]},
        ),
    }
    for i, (pid, (pixels, tags)) in enumerate(files.items()):
        write_dicom(tmp_path / f"{pid}.dcm", pixels, tags, (i,))
    manifest = pd.DataFrame(
        {"patientId": list(files), "dicom": [str(tmp_path / f"{p}.dcm") for p in files], "target": [0, 1, 0, 1]}
    ).assign(n_boxes=0, **{"class": "Normal"})
    max_age = 90.0  # not the default: its path to the features is checked
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    # as the workflow does: the metadata stage's CSV, read back by the preprocessing stage
    metadata.write_table(tmp_path / "manifest.csv", tmp_path / "t.csv", tmp_path / "d.json", max_age_years=max_age)
    table = metadata.read_table(tmp_path / "t.csv")
    assert list(table["age_status"]) == ["ok", "missing", "implausible", "ok"]
    cfg = pp.PreprocessConfig(size=32, clip_limit=0.02, tiles=(4, 4))
    pp.write_hdf5(table, manifest, tmp_path / "x.h5", cfg, max_age_years=max_age)
    with h5py.File(tmp_path / "x.h5", "r") as h5:
        images, meta = h5["image"][:], h5["meta"][:]
        record = json.loads(h5.attrs["preprocessing"])
    assert record == pp.preprocessing_record(cfg, max_age)
    assert pp.config_from_record(record, "x") == (cfg, max_age)
    for k, pid in enumerate(files):
        got = pp.prepare_dicom(metadata.read_dicom(tmp_path / f"{pid}.dcm"), pid, cfg, max_age)
        np.testing.assert_array_equal(got.image, images[k])
        np.testing.assert_array_equal(got.features, meta[k])
    assert meta[2, 5] == 1, "an age over max_age_years counts as unknown"


def test_the_preprocessing_record_names_every_parameter_and_is_refused_when_incomplete():
    cfg = pp.PreprocessConfig(size=40, window_mode="fixed", level=100, width=400, percentiles=(1, 99), clahe=False)
    record = pp.preprocessing_record(cfg, 110)
    assert json.loads(json.dumps(record)) == record, "plain data"
    assert record["size"] == 40 and record["window"] == {
        "mode": "fixed",
        "level": 100,
        "width": 400,
        "percentiles": [1, 99],
    }
    assert (
        record["clahe"] == {"enabled": False, "clip_limit": 0.01, "tiles": [8, 8]}
        and record["resampling"] == pp.RESAMPLING
    )
    assert record["metadata"]["max_age_years"] == 110 and record["metadata"]["features"] == pp.feature_names(
        cfg.age_bins
    )
    assert pp.config_from_record(record, "ckpt.pt") == (cfg, 110)
    with pytest.raises(InputError, match="ckpt.pt: records no preprocessing"):
        pp.config_from_record(None, "ckpt.pt")
    del record["window"]["mode"]
    with pytest.raises(InputError, match="incomplete or invalid preprocessing record"):
        pp.config_from_record(record, "ckpt.pt")
