"""Reading DICOM headers and pixels: age strings, pixel spacing, windows, decodable pixels."""

import numpy as np
import pydicom
import pytest

from medflow.rsna import dicom as dcm
from medflow.synthetic.rsna import write_dicom


@pytest.mark.parametrize(
    "value, years, status",
    [
        ("058Y", 58.0, "ok"),
        ("51", 51.0, "ok"),  # the real RSNA headers: a bare number of years
        (" 045Y ", 45.0, "ok"),
        ("018M", 1.5, "ok"),
        ("026W", 26 * 7 / 365.25, "ok"),
        ("010D", 10 / 365.25, "ok"),
        ("003y", 3.0, "ok"),
        ("", None, "missing"),
        (None, None, "missing"),
        ("58 years", None, "invalid"),
        ("Y058", None, "invalid"),
        ("-05Y", None, "invalid"),
        ("148", None, "implausible"),  # a few real headers say 148-155
        ("150Y", None, "implausible"),
    ],
)
def test_parse_age(value, years, status):
    got, st = dcm.parse_age(value, max_years=120)
    assert st == status
    assert got == pytest.approx(years) if years is not None else got is None


def _ds(**tags):
    ds = pydicom.Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def test_pixel_spacing_and_its_fallbacks():
    assert dcm.pixel_spacing(_ds(PixelSpacing=[0.5, 0.7])) == ((0.5, 0.7), "ok")
    assert dcm.pixel_spacing(_ds(PixelSpacing=[0, 0], ImagerPixelSpacing=[0.2, 0.2])) == ((0.2, 0.2), "imager")
    assert dcm.pixel_spacing(_ds(ImagerPixelSpacing=[0.2, 0.3])) == ((0.2, 0.3), "imager")
    assert dcm.pixel_spacing(_ds(PixelSpacing=[0, 0.1])) == (None, "zero")
    assert dcm.pixel_spacing(_ds()) == (None, "missing")
    assert dcm.pixel_spacing(_ds(PixelSpacing="")) == (None, "missing")


def test_header_window_takes_the_first_of_several():
    assert dcm.header_window(_ds(WindowCenter=[40, 400], WindowWidth=[80, 2000])) == (40.0, 80.0)
    assert dcm.header_window(_ds(WindowCenter=2048, WindowWidth=4096)) == (2048.0, 4096.0)
    assert dcm.header_window(_ds(WindowCenter=2048)) is None
    assert dcm.header_window(_ds(WindowCenter=10, WindowWidth=0)) is None  # width < 1 is not a window


def test_decode_applies_the_modality_lut(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    write_dicom(tmp_path / "a.dcm", pixels, {"BitsStored": 12, "RescaleSlope": 2, "RescaleIntercept": -10}, (0,))
    img = dcm.decode_pixels(pydicom.dcmread(tmp_path / "a.dcm"))
    assert img.dtype == np.float32 and img.shape == (3, 4)
    np.testing.assert_array_equal(img, pixels * 2.0 - 10)


def test_unsupported_transfer_syntax_and_colour_are_reported_not_raised_raw(tmp_path):
    write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), {}, (0,))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder in pydicom
    with pytest.raises(dcm.UnsupportedPixels, match="unsupported transfer syntax MPEG2"):
        dcm.decode_pixels(ds)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(dcm.UnsupportedPixels, match="not greyscale"):
        dcm.decode_pixels(ds)


def test_only_single_projection_radiographs_are_radiographs(tmp_path):
    write_dicom(tmp_path / "cr.dcm", np.zeros((8, 8), np.uint8), {}, (1,))
    ds = pydicom.dcmread(tmp_path / "cr.dcm")
    assert ds.Modality == "CR" and dcm.radiograph_problem(ds) is None
    ds.Modality = "DX"
    assert dcm.radiograph_problem(ds) is None
    ds.Modality = "CT"
    assert dcm.radiograph_problem(ds) == "Modality CT, not CR/DX"
    del ds.Modality  # no Modality: the SOP class decides
    assert dcm.radiograph_problem(ds) is None
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    assert dcm.radiograph_problem(ds) == "SOP class MR Image Storage"
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.NumberOfFrames = 12
    assert dcm.radiograph_problem(ds) == "12 frames, not one image"
