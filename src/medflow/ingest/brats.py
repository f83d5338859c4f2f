"""BraTS raw layouts: case discovery, per-case validation, the split and the manifest.

The same code reads the synthetic copy and a real download of any release in
:mod:`medflow.ingest.releases` (config ``brats.release``), e.g. 2020's ``MICCAI_BraTS2020_TrainingData``:
``BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii[.gz]`` plus ``name_mapping.csv``.
Every function takes the release as keyword ``release`` (default: 2020) and asks it for names and labels.
NIfTI arrays are indexed (i, j, k) = (X, Y, Z) on disk; the stages after ingest work in (Z, Y, X).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medflow.errors import InputError, Problems
from medflow.ingest import releases
from medflow.ingest.releases import KINDS as KINDS
from medflow.ingest.releases import MODALITIES as MODALITIES
from medflow.ingest.releases import Release

log = logging.getLogger(__name__)

DEFAULT_RELEASE = releases.get("2020")  # what callers that name no release get
NIFTI_SUFFIXES = (".nii", ".nii.gz")
GRADES = ("HGG", "LGG")
AFFINE_ATOL = 1e-3  # mm; real BraTS affines are identical across modalities of a case


def discover_cases(raw_dir: str | os.PathLike, *, release: Release = DEFAULT_RELEASE) -> list[str]:
    """Sorted case ids: the folders directly under ``raw_dir`` whose name matches ``release.case_pattern``."""
    if not str(raw_dir):
        raise InputError("brats.raw_dir", f"is empty: set it to your {release.raw_subdir} folder")
    root = Path(raw_dir)
    if not root.is_dir():
        raise InputError(root, "BraTS raw folder not found (brats.raw_dir)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    cases = [name for name in folders if release.case_re.fullmatch(name)]
    if not cases:
        looked = f"no case folders match {release.case_pattern} (the {release.name} layout; brats.release)"
        raise InputError(root, f"{looked}; {_found_instead(folders)}")
    return cases


def _found_instead(folders: Sequence[str]) -> str:
    """What a folder without the configured release's cases holds: one folder name, preferably a case of
    another release (named, so a wrong ``brats.release`` is plain to see)."""
    if not folders:
        return "it holds no folders"
    for name in folders:
        for other in releases.RELEASES.values():
            if other.case_re.fullmatch(name):
                return f"found e.g. {name} (the {other.name} layout)"
    return f"found e.g. {folders[0]}"


def discover_predict_cases(input_dir: str | os.PathLike, *, release: Release = DEFAULT_RELEASE) -> list[str]:
    """Sorted ids of the cases to predict on: the folders directly under ``input_dir`` whose name matches
    ``release.predict_pattern`` (the release's validation download, e.g. ``BraTS20_Validation_NNN``, or its
    training ids). No such folder -> one InputError naming the folder and the patterns looked for."""
    from medflow.ingest.ids import check_id

    if not str(input_dir):
        raise InputError("predict.brats.input", f"is empty: set it to your {release.validation_subdir} folder")
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError(root, "folder to predict on not found (predict.brats.input)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    cases = [check_id(name, root / name, "case id") for name in folders if release.predict_re.fullmatch(name)]
    if not cases:
        looked = " or ".join(p for p in (release.validation_pattern, release.case_pattern) if p)
        raise InputError(
            root, f"no case folders to predict on match {looked} (the {release.name} layout); {_found_instead(folders)}"
        )
    return cases


def predict_files(
    input_dir: str | os.PathLike, case: str, synthetic: bool = False, *, release: Release = DEFAULT_RELEASE
) -> dict[str, str]:
    """{modality: path} a new case's predict job takes as input (no segmentation): the public names in the
    synthetic unlabeled set (not on disk yet when the DAG is built), the files found on disk otherwise; a
    missing modality is left out, so only that case's job fails, naming it."""
    files = raw_files(input_dir, case, synthetic, release=release)
    return {k: files[k] for k in MODALITIES if k in files}


def expected_files(raw_dir: str | os.PathLike, case: str, *, release: Release = DEFAULT_RELEASE) -> dict[str, str]:
    """{kind: path} with the public names (``release.suffix``): what the synthetic copy writes."""
    return {k: str(Path(raw_dir) / case / release.file_name(case, k)) for k in KINDS}


def _nifti_files(case_dir: Path) -> list[Path]:
    # os.scandir: file types from the directory listing, no stat per file (1,000+ cases at DAG time).
    try:
        with os.scandir(case_dir) as entries:
            names = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(NIFTI_SUFFIXES))
    except FileNotFoundError:
        raise InputError(case_dir, "case folder not found") from None
    return [case_dir / name for name in names]


def case_files(raw_dir: str | os.PathLike, case: str, *, release: Release = DEFAULT_RELEASE) -> dict[str, str]:
    """{kind: path} of the files found for one case; a kind that is not found is left out.

    Each kind is the release's file name (``release.file_name``, e.g. ``<case>_flair`` in 2020,
    ``<case>-t2f`` in 2023-GLI) with ``.nii`` or ``.nii.gz``. The segmentation is that or else the one
    other NIfTI file whose name contains "seg" (case 355 of the 2020 download ships it as
    ``W39_1998.09.19_Segm.nii``).
    """
    case_dir = Path(raw_dir) / case
    files = _nifti_files(case_dir)
    names = {p.name for p in files}
    found: dict[str, str] = {}
    for kind in KINDS:
        for suffix in NIFTI_SUFFIXES:
            name = release.file_name(case, kind, suffix)
            if name in names:
                found[kind] = str(case_dir / name)
                break
    if "seg" not in found:
        modality_files = set(found.values())
        others = [p for p in files if str(p) not in modality_files and "seg" in p.name.lower()]
        if len(others) == 1:
            found["seg"] = str(others[0])
    return found


def raw_files(
    raw_dir: str | os.PathLike, case: str, synthetic: bool = False, *, release: Release = DEFAULT_RELEASE
) -> dict[str, str]:
    """{kind: path} a case's jobs take as input: the public names in the synthetic copy (written by
    its own job, so not on disk yet when the DAG is built), the files found on disk in a download.
    A missing file is left out, so only that case's validation job fails, naming it."""
    if synthetic:
        return expected_files(raw_dir, case, release=release)
    return case_files(raw_dir, case, release=release)


def public_name(path: str | os.PathLike, case: str, *, release: Release = DEFAULT_RELEASE) -> str:
    """A raw file's name for derived tables and attributes: the public name when it is one of the
    release's file names of ``case`` (``.nii`` or ``.nii.gz``), a placeholder otherwise (a non-standard
    name may carry a date)."""
    name = Path(path).name
    public = {release.file_name(case, k, s) for k in KINDS for s in NIFTI_SUFFIXES}
    return name if name in public else "<non-standard file name>"


def _require_files(
    raw_dir: str | os.PathLike,
    case: str,
    problems: Problems,
    *,
    release: Release = DEFAULT_RELEASE,
    kinds: Sequence[str] = KINDS,
) -> dict[str, str]:
    """The case's files of ``kinds``; each kind not found is recorded in ``problems``."""
    found = case_files(raw_dir, case, release=release)
    found = {k: p for k, p in found.items() if k in kinds}
    for kind in kinds:
        if kind not in found:
            expected = Path(raw_dir) / case / release.file_name(case, kind)
            what = "segmentation" if kind == "seg" else f"{kind} modality"
            problems.add(expected, f"missing {what} (looked for .nii and .nii.gz)")
    return found


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def load_nifti(path: str | os.PathLike, dtype=None):
    """(nibabel image, data array in the file's (X, Y, Z) order); any read problem -> InputError."""
    import nibabel as nib

    try:
        # No memory map: a file replaced or cut while mapped would kill the job with SIGBUS.
        img = nib.load(str(path), mmap=False)
    except Exception as exc:  # nibabel raises several types for non-NIfTI files
        raise InputError(path, f"not a readable NIfTI file ({_one_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI file (read as {type(img).__name__})")
    try:
        data = np.asanyarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
    except Exception as exc:  # a truncated file fails only when its data are read
        raise InputError(path, f"truncated or unreadable image data ({_one_line(exc)})") from None
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D volume, got shape {data.shape}")
    return img, data


def validate_case(
    raw_dir: str | os.PathLike, case: str, *, release: Release = DEFAULT_RELEASE, with_seg: bool = True
) -> dict:
    """Check one case and describe it; every problem of its files is reported, together, as InputErrors
    naming the file (a single problem: one InputError).

    Checks: every modality and the segmentation present; each a readable, untruncated 3-D NIfTI;
    same shape and affine as flair (as the first readable file, if flair is not); no NaN/inf; no all-zero
    modality; segmentation values within the release's label set (``release.label_values``, e.g.
    {0, 1, 2, 4} in 2020). ``with_seg=False`` (a new, unlabeled case to predict on): the four modalities
    only; a segmentation file, if any, is ignored. Each file is read once. Returns ``{case_id, shape_xyz,
    spacing_xyz, affine, files, source_files}`` (``files``: kind -> path; ``source_files``: kind -> public
    file name).
    """
    kinds = KINDS if with_seg else MODALITIES
    ref_kind = ref_shape = ref_affine = ref_img = None
    with Problems() as problems:
        files = _require_files(raw_dir, case, problems, release=release, kinds=kinds)
        for kind in kinds:
            if kind not in files:
                continue
            path = files[kind]
            loaded = problems.check(load_nifti, path)
            if loaded is None:
                continue
            img, data = loaded
            if ref_img is None:
                ref_kind, ref_img, ref_shape, ref_affine = kind, img, data.shape, img.affine
            elif data.shape != ref_shape:
                problems.add(path, f"shape {list(data.shape)} differs from {ref_kind}'s {list(ref_shape)}")
            elif not np.allclose(img.affine, ref_affine, atol=AFFINE_ATOL):
                problems.add(path, f"affine (voxel-to-mm geometry) differs from {ref_kind}'s")
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                problems.add(path, "contains NaN or infinite values")
            if kind == "seg":
                values = np.unique(data)
                # The release's own check words the message; NaN is reported above.
                problems.check(release.to_stored, values[np.isfinite(values)], path)
            elif not data.any():
                problems.add(path, "all voxels are zero")
            del data
    return {
        "case_id": case,
        "shape_xyz": [int(s) for s in ref_shape],
        "spacing_xyz": [float(s) for s in ref_img.header.get_zooms()[:3]],
        "affine": np.asarray(ref_affine, dtype=float).tolist(),
        "files": files,
        "source_files": {k: public_name(p, case, release=release) for k, p in files.items()},
    }


def read_grades(
    mapping_csv: str | os.PathLike, cases: Sequence[str], *, release: Release = DEFAULT_RELEASE
) -> dict[str, str]:
    """{case: "HGG" | "LGG"} from the release's grade file (2020: ``name_mapping.csv``, ids in
    ``release.grade_id_column``); every missing row or bad grade (across all ``cases``) is reported,
    together, as InputErrors naming the CSV. Only for a release with grades (``release.has_grades``)."""
    import pandas as pd

    if not release.has_grades:
        raise ValueError(f"BraTS {release.name} has no grade file")
    id_col = release.grade_id_column
    try:
        df = pd.read_csv(mapping_csv, dtype=str)
    except FileNotFoundError:
        raise InputError(mapping_csv, f"not found (the BraTS download's {release.grade_file})") from None
    except Exception as exc:
        raise InputError(mapping_csv, f"not a readable CSV ({exc})") from None
    out = {}
    with Problems() as problems:
        for col in ("Grade", id_col):
            if col not in df.columns:
                problems.add(mapping_csv, f"no '{col}' column")
        problems.raise_if_any()
        grades = dict(zip(df[id_col].str.strip(), df["Grade"].str.strip()))
        for case in cases:
            if case not in grades:
                problems.add(mapping_csv, f"no row for case {case}")
            elif grades[case] not in GRADES:
                problems.add(mapping_csv, f"case {case} has grade {grades[case]!r}, expected HGG or LGG")
            else:
                out[case] = grades[case]
    return out


def _grades_if_any(raw_dir: str | os.PathLike, cases: Sequence[str], release: Release) -> dict[str, str]:
    """{case: grade}, or "" for every case of a release without a grade file."""
    if not release.has_grades:
        return dict.fromkeys(cases, "")
    return read_grades(Path(raw_dir) / release.grade_file, cases, release=release)


def write_split(
    raw_dir: str | os.PathLike,
    cases: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    out_csv: str | os.PathLike,
    *,
    release: Release = DEFAULT_RELEASE,
):
    """``id,split,grade,patient``: splits drawn per patient (``release.patient_of``) and stratified by the
    patient's grade where the release has grades (grade "" otherwise), so every case of a patient (e.g.
    both time points in 2023-GLI) lands in its patient's split. Fractions e.g. {train: .7, val: .15,
    test: .15}. Every missing grade row, bad grade, case id outside the patient pattern and patient whose
    cases disagree in grade is reported, together, before anything is written."""
    from medflow.ingest import splits

    with Problems() as problems:
        grades = problems.check(_grades_if_any, raw_dir, cases, release)
        patient = {c: problems.check(release.patient_of, c) for c in cases}
        problems.raise_if_any()
        patient_grade: dict[str, str] = {}
        for case in sorted(cases):
            p, grade = patient[case], grades[case]
            if patient_grade.setdefault(p, grade) != grade:
                where = Path(raw_dir) / release.grade_file
                problems.add(where, f"patient {p} has cases of grades {patient_grade[p]} and {grade}, expected one")
    patients = sorted(patient_grade)
    strata = [patient_grade[p] for p in patients] if release.has_grades else None
    by_patient = splits.assign_splits(patients, fractions, seed, strata=strata)
    assignment = {c: by_patient[patient[c]] for c in cases}
    extra = {"grade": [grades[c] for c in assignment], "patient": [patient[c] for c in assignment]}
    df = splits.write_split(out_csv, assignment, extra=extra)
    for split, part in df.groupby("split"):
        counts = part["grade"].value_counts().sort_index().items() if release.has_grades else ()
        log.info(
            "%s: %d cases of %d patients%s",
            split,
            len(part),
            part["patient"].nunique(),
            "".join(f", {g} {n}" for g, n in counts),
        )
    return df


def manifest_row(raw_dir: str | os.PathLike, case: str, grade: str, *, release: Release = DEFAULT_RELEASE) -> dict:
    """One manifest row from the headers only (cheap on a full download). An unreadable or missing
    file leaves shape/spacing empty here: ``validate_case`` reports it, in that case's own job."""
    import nibabel as nib

    files = case_files(raw_dir, case, release=release)
    shape = spacing = ""
    if "flair" in files:
        try:
            hdr = nib.load(files["flair"]).header
            shape = "x".join(str(int(s)) for s in hdr.get_data_shape())
            spacing = "x".join(f"{float(s):g}" for s in hdr.get_zooms()[:3])
        except Exception as exc:
            log.warning(
                "%s: header unreadable (%s); brats_validate will stop this case", files["flair"], type(exc).__name__
            )
    return {
        "id": case,
        "grade": grade,
        "shape_xyz": shape,
        "spacing_xyz_mm": spacing,
        "files": ";".join(public_name(files[k], case, release=release) for k in KINDS if k in files),
        "missing": ";".join(k for k in KINDS if k not in files),
    }


def write_manifest(
    raw_dir: str | os.PathLike,
    cases: Sequence[str],
    out_csv: str | os.PathLike,
    *,
    release: Release = DEFAULT_RELEASE,
):
    """``results/brats/ingest/manifest.csv``: one row per case (id, grade, shape, spacing, files, missing);
    grade "" for a release without a grade file.

    Every missing grade row and case folder is reported, together, before anything is written. A
    case that lacks a file is listed (column ``missing``) and logged, not fatal: its own ``brats_validate``
    job stops it, and under ``--keep-going`` the other cases go on.
    """
    import pandas as pd

    from medflow import io

    with Problems() as problems:
        grades = problems.check(_grades_if_any, raw_dir, cases, release)
        rows = [problems.check(manifest_row, raw_dir, c, grades[c] if grades else "", release=release) for c in cases]
    df = pd.DataFrame(rows)
    for case, missing in zip(df["id"], df["missing"]):
        if missing:
            log.warning("%s: missing %s; brats_validate will stop this case", case, missing.replace(";", ", "))
    with io.atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df


def write_validation(raw_dir: str | os.PathLike, case: str, out: str | os.PathLike, *, release: Release) -> dict:
    """The brats_validate stage: ``validate_case`` (every problem at once), then what later stages need as
    JSON at ``out`` (full paths stay out of derived files; ``source_files`` keeps the public names)."""
    from medflow import io

    info = validate_case(raw_dir, case, release=release)
    info.pop("files")
    io.write_json(out, info)
    log.info("%s: valid, shape (X, Y, Z) %s, spacing %s mm", info["case_id"], info["shape_xyz"], info["spacing_xyz"])
    return info
