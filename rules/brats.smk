# BraTS preprocessing (any release: BRATS_RELEASE, rules/common.smk), shared by the segmentation and grade pipelines:
# ingest -> validate -> N4 -> trim -> stack (HDF5) -> patches.

# >>> brats_prep
# Preprocessing: ingest (split + manifest) and, per case, validate -> N4 -> trim -> stack (HDF5) ->
# patches. Library: medflow.ingest.brats, medflow.preprocess.{n4,trim,stack,patches}.
# Later stages read BRATS_SPLIT, BRATS_STACK and BRATS_PATCHES (docs/brats_preprocessing.md).
from dataclasses import fields

from medflow.ingest.brats import MODALITIES as BRATS_MODALITIES
from medflow.preprocess.n4 import N4Params

BRATS = f"{RESULTS}/brats"
BRATS_SPLIT = f"{BRATS}/ingest/split.csv"
BRATS_MANIFEST = f"{BRATS}/ingest/manifest.csv"
BRATS_VALID = f"{BRATS}/validate/{{case}}.json"
BRATS_N4 = f"{BRATS}/n4/{{case}}/{{case}}_{{modality}}.nii.gz"
BRATS_TRIM = f"{BRATS}/trim/{{case}}.json"
BRATS_STACK = f"{BRATS}/stack/{{case}}.h5"
BRATS_PATCHES = f"{BRATS}/patches/{{case}}.h5"

# Only what changes the corrected image: threads and per_modality change how N4 runs, not its result.
BRATS_N4_PARAMS = {f.name: config["brats"]["n4"][f.name] for f in fields(N4Params)}
BRATS_N4_CASE = expand(BRATS_N4, modality=BRATS_MODALITIES, allow_missing=True)  # one case's four outputs
# brats.jobs: per_stage (one job per case and stage: a changed value reruns only its stage and after) or
# per_case (one job per case: five times fewer jobs, for downloads of a thousand cases and more).
BRATS_PER_CASE = config["brats"]["jobs"] == "per_case"
# The parameters that shape a stacked case's voxels (N4 and trimming): recorded in the segmentation and grade
# checkpoints by training, compared by prediction on new cases, which refuses a checkpoint made with others.
BRATS_SEGMENTATION_PREPROCESSING = {"n4": BRATS_N4_PARAMS, "trim": config["brats"]["trim"]}


rule brats_ingest:
    """Split (id,split,grade,patient: by patient, stratified by grade where the release has grades) and
    manifest of every case."""
    input:
        mapping=lambda wc: [f"{raw_dir('brats')}/{BRATS_RELEASE.grade_file}"] if BRATS_RELEASE.has_grades else [],
        volumes=lambda wc: [p for c in brats_cases() for p in brats_raw(c).values()],
    output:
        split=BRATS_SPLIT,
        manifest=BRATS_MANIFEST,
    log:
        f"{LOGS}/brats_ingest.log",
    conda:
        "../envs/medflow.yaml"
    params:
        raw=lambda wc: raw_dir("brats"),
        cases=lambda wc: brats_cases(),
        fractions=config["brats"]["ingest"]["split"],
        release=BRATS_RELEASE.name,
        seed=config["seed"],
    script:
        "../workflow/scripts/brats_ingest.py"


if not BRATS_PER_CASE:

    rule brats_validate:
        """One case's raw files are complete, readable, consistent and plausible (else every problem, together)."""
        input:
            unpack(lambda wc: brats_raw(wc.case)),
        output:
            BRATS_VALID,
        log:
            f"{LOGS}/brats_validate/{{case}}.log",
        conda:
            "../envs/medflow.yaml"
        params:
            raw=lambda wc: raw_dir("brats"),
            release=BRATS_RELEASE.name,
        script:
            "../workflow/scripts/brats_validate.py"


if not BRATS_PER_CASE and config["brats"]["n4"]["per_modality"]:

    rule brats_n4:
        """N4 bias-field correction of one modality (more parallel jobs, more job start-ups)."""
        input:
            valid=BRATS_VALID,
            images=lambda wc: brats_raw(wc.case).get(wc.modality, []),
        output:
            BRATS_N4,
        log:
            f"{LOGS}/brats_n4/{{case}}_{{modality}}.log",
        benchmark:
            f"{BENCH}/brats_n4/{{case}}_{{modality}}.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["brats"]["n4"]["threads"]
        params:
            n4=BRATS_N4_PARAMS,
        script:
            "../workflow/scripts/brats_n4.py"

elif not BRATS_PER_CASE:

    rule brats_n4:
        """N4 bias-field correction of the four modalities of one case (one job start-up per case)."""
        input:
            valid=BRATS_VALID,
            images=lambda wc: [p for m, p in brats_raw(wc.case).items() if m in BRATS_MODALITIES],
        output:
            BRATS_N4_CASE,
        log:
            f"{LOGS}/brats_n4/{{case}}.log",
        benchmark:
            f"{BENCH}/brats_n4/{{case}}.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["brats"]["n4"]["threads"]
        params:
            n4=BRATS_N4_PARAMS,
        script:
            "../workflow/scripts/brats_n4.py"


if not BRATS_PER_CASE:

    rule brats_trim:
        """Kept axial slice range: first to last slice with signal in any modality or label, plus margin."""
        input:
            images=BRATS_N4_CASE,
            seg=lambda wc: brats_raw(wc.case).get("seg", []),
        output:
            BRATS_TRIM,
        log:
            f"{LOGS}/brats_trim/{{case}}.log",
        conda:
            "../envs/medflow.yaml"
        params:
            margin=config["brats"]["trim"]["margin"],
        script:
            "../workflow/scripts/brats_trim.py"

    rule brats_stack:
        """One HDF5 per case: image (4, Z, Y, X) float32, label (Z, Y, X) uint8 (stored labels), geometry."""
        input:
            images=BRATS_N4_CASE,
            seg=lambda wc: brats_raw(wc.case).get("seg", []),
            trim=BRATS_TRIM,
            valid=BRATS_VALID,
        output:
            BRATS_STACK,
        log:
            f"{LOGS}/brats_stack/{{case}}.log",
        benchmark:
            f"{BENCH}/brats_stack/{{case}}.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            stack=config["brats"]["stack"],
            release=BRATS_RELEASE.name,
        script:
            "../workflow/scripts/brats_stack.py"

    rule brats_patches:
        """N patches per case with background fraction below the threshold, standardised, one-hot labels."""
        input:
            BRATS_STACK,
        output:
            BRATS_PATCHES,
        log:
            f"{LOGS}/brats_patches/{{case}}.log",
        benchmark:
            f"{BENCH}/brats_patches/{{case}}.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            patches=config["brats"]["patches"],
            seed=config["seed"],
        script:
            "../workflow/scripts/brats_patches.py"


if BRATS_PER_CASE:

    rule brats_prep:
        """All five stages of one case in one job (brats.jobs: per_case): validate -> N4 -> trim -> stack ->
        patches, the per-stage rules' files bar the N4 volumes; a changed value of any stage reruns the case."""
        input:
            unpack(lambda wc: brats_raw(wc.case)),
        output:
            valid=BRATS_VALID,
            trim=BRATS_TRIM,
            stack=BRATS_STACK,
            patches=BRATS_PATCHES,
        log:
            f"{LOGS}/brats_prep/{{case}}.log",
        benchmark:
            f"{BENCH}/brats_prep/{{case}}.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["brats"]["n4"]["threads"]
        params:
            raw=lambda wc: raw_dir("brats"),
            release=BRATS_RELEASE.name,
            n4=BRATS_N4_PARAMS,
            margin=config["brats"]["trim"]["margin"],
            stack=config["brats"]["stack"],
            patches=config["brats"]["patches"],
            seed=config["seed"],
        script:
            "../workflow/scripts/brats_prep.py"


# <<< brats_prep
