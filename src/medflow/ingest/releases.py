"""BraTS releases: what differs between the downloads a group may hold, stated once per release.

Every stage that touches a raw BraTS file (discovery, validation, stacking, the synthetic generator,
later prediction output) asks the configured release (config ``brats.release``); nothing else in the
pipeline names a release. Inside the pipeline, labels are always the stored ones: 0 background,
1 necrotic core (NCR/NET), 2 oedema (ED), 3 enhancing tumour (ET) (``medflow.segmentation.regions``).

A user's own layout of the same kind of data is one more entry in ``RELEASES`` (docs/brats_preprocessing.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medflow.errors import InputError

# Our modality names (the order of the stacked channels) and the segmentation: the file kinds of a case.
MODALITIES = ("flair", "t1", "t1ce", "t2")
KINDS = (*MODALITIES, "seg")
# Stored label of each tumour part (the pipeline's own convention).
STORED = {"necrotic": 1, "edema": 2, "enhancing": 3}


@dataclass(frozen=True)
class Release:
    """The layout of one BraTS release.

    ``case_pattern``: a case folder's name (regex, whole name). ``files``: the file kind of each of our
    kinds in ``<case><separator><file kind>.nii[.gz]``. ``labels``: the release's label value of each tumour
    part. ``patient_pattern``: a regex whose group ``patient`` takes the patient id from a case id
    (``None``: one case per patient); cases of one patient always land in the same split.
    ``grade_file``/``grade_id_column``: the CSV of LGG/HGG grades, if the release has one.
    ``case_format``: the case id of number ``i`` (and time point ``t``), for the synthetic generator.
    ``submission_suffix``: what follows the case id in a submitted segmentation's file name.
    ``validation_subdir``/``validation_pattern``/``validation_format``: the release's unlabeled validation
    download (case folders without seg) that the predict stage reads; ``validation_pattern`` ``None``: its
    case ids look like the training ones.
    """

    name: str
    raw_subdir: str
    case_pattern: str
    case_format: str
    files: Mapping[str, str]
    separator: str
    labels: Mapping[str, int]
    suffix: str = ".nii.gz"
    patient_pattern: str | None = None
    grade_file: str | None = None
    grade_id_column: str | None = None
    submission_suffix: str = ".nii.gz"
    validation_subdir: str = ""
    validation_pattern: str | None = None
    validation_format: str | None = None

    @property
    def case_re(self) -> re.Pattern:
        return re.compile(self.case_pattern)

    @property
    def predict_pattern(self) -> str:
        """Case ids the predict stage accepts (regex, whole name): the validation download's or the training ones."""
        patterns = dict.fromkeys(p for p in (self.validation_pattern, self.case_pattern) if p)
        return "|".join(f"(?:{p})" for p in patterns)

    @property
    def predict_re(self) -> re.Pattern:
        return re.compile(self.predict_pattern)

    def validation_case(self, i: int) -> str:
        """The id of validation case number ``i`` (from 1): ``validation_format``, else the training
        ``case_format`` (first time point), for the synthetic unlabeled set."""
        return (self.validation_format or self.case_format).format(i=i, t=0)

    @property
    def has_grades(self) -> bool:
        return self.grade_file is not None

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every value a segmentation of this release may hold, background first."""
        return (0, *sorted(self.labels.values()))

    def file_name(self, case: str, kind: str, suffix: str | None = None) -> str:
        """The public file name of one kind (``flair`` ... ``seg``) of a case."""
        return f"{case}{self.separator}{self.files[kind]}{suffix or self.suffix}"

    def patient_of(self, case: str) -> str:
        """The patient a case belongs to (the case itself where a release has one case per patient)."""
        if self.patient_pattern is None:
            return case
        m = re.fullmatch(self.patient_pattern, case)
        if m is None:
            raise InputError(case, f"case id does not match the {self.name} patient pattern {self.patient_pattern}")
        return m.group("patient")

    def to_stored(self, seg: np.ndarray, path="segmentation") -> np.ndarray:
        """Release labels -> stored uint8 {0, 1, 2, 3}; a value outside the release's set -> InputError
        naming the file, the values found and the expected set."""
        values = np.unique(seg)
        bad = np.setdiff1d(values, self.label_values)
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:8])
            expected = ", ".join(map(str, self.label_values))
            raise InputError(
                path, f"segmentation values {{{shown}}} outside the BraTS {self.name} label set {{{expected}}}"
            )
        lut = np.zeros(int(max(self.label_values)) + 1, np.uint8)
        for part, value in self.labels.items():
            lut[value] = STORED[part]
        return lut[np.asarray(seg).astype(np.int64)]

    def from_stored(self, stored: np.ndarray) -> np.ndarray:
        """Stored labels {0, 1, 2, 3} -> this release's labels (uint8), e.g. for a submission."""
        lut = np.zeros(4, np.uint8)
        for part, value in self.labels.items():
            lut[STORED[part]] = value
        return lut[np.asarray(stored).astype(np.int64)]


_CLASSIC = {k: k for k in KINDS}  # 2020 and 2021 name files by our kinds
RELEASES: dict[str, Release] = {
    "2020": Release(
        name="2020",
        raw_subdir="MICCAI_BraTS2020_TrainingData",
        case_pattern=r"BraTS20_Training_\d+",
        case_format="BraTS20_Training_{i:03d}",
        files=_CLASSIC,
        separator="_",
        labels={"necrotic": 1, "edema": 2, "enhancing": 4},
        suffix=".nii",
        grade_file="name_mapping.csv",
        grade_id_column="BraTS_2020_subject_ID",
        validation_subdir="MICCAI_BraTS2020_ValidationData",
        validation_pattern=r"BraTS20_Validation_\d+",
        validation_format="BraTS20_Validation_{i:03d}",
    ),
    "2021": Release(
        name="2021",
        raw_subdir="BraTS2021_Training_Data",
        case_pattern=r"BraTS2021_\d{5}",
        case_format="BraTS2021_{i:05d}",
        files=_CLASSIC,
        separator="_",
        labels={"necrotic": 1, "edema": 2, "enhancing": 4},
        validation_subdir="RSNA_ASNR_MICCAI_BraTS2021_ValidationData",
    ),
    "2023-gli": Release(
        name="2023-gli",
        raw_subdir="ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
        case_pattern=r"BraTS-GLI-\d{5}-\d{3}",
        case_format="BraTS-GLI-{i:05d}-{t:03d}",
        files={"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"},
        separator="-",
        labels={"necrotic": 1, "edema": 2, "enhancing": 3},
        # BraTS-GLI-<patient>-<time point>: both time points of a patient go to the same split.
        patient_pattern=r"(?P<patient>BraTS-GLI-\d{5})-\d{3}",
        validation_subdir="ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData",
    ),
}


def get(name: str) -> Release:
    """The release named in config (``brats.release``)."""
    try:
        return RELEASES[str(name)]
    except KeyError:
        raise ValueError(f"unknown BraTS release {name!r}: one of {', '.join(RELEASES)}") from None
