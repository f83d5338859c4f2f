# BraTS grade, LGG vs HGG: axial slices of the stacked cases (4 modalities as channels) -> ResNet18
# with a 4-channel conv1 -> patient-level evaluation. Reads BRATS_SPLIT and BRATS_STACK
# (rules/brats.smk). Library: medflow.grade (docs/brats_grade.md).
BRATS_GRADE = f"{BRATS}/grade"
BRATS_GRADE_CFG = config["brats"]["grade"]

# Grades exist only where the release ships a grade file (2020's name_mapping.csv): say so at start-up.
if is_activated("brats_grade") and not BRATS_RELEASE.has_grades:
    raise ValueError(
        f"pipelines.brats_grade needs LGG/HGG grades, and BraTS {BRATS_RELEASE.name} has no grade file "
        f"(brats.release): set pipelines.brats_grade: false, or use a release with grades "
        f"({', '.join(r.name for r in releases.RELEASES.values() if r.has_grades)})"
    )


rule brats_grade_slices:
    """Tumour slices of every case (all, or top-k by area), standardised per channel, in one HDF5."""
    input:
        stacks=lambda wc: expand(BRATS_STACK, case=brats_cases()),
        split=BRATS_SPLIT,
    output:
        f"{BRATS_GRADE}/slices/slices.h5",
    log:
        f"{LOGS}/brats_grade_slices.log",
    benchmark:
        f"{BENCH}/brats_grade_slices.tsv"
    conda:
        "../envs/medflow.yaml"
    params:
        slices=BRATS_GRADE_CFG["slices"],
    script:
        "../workflow/scripts/brats_grade_slices.py"


rule brats_grade_train:
    """ResNet18 (4-channel conv1, 2-way head) via medflow.train.fit, best patient-level val AUC."""
    input:
        slices=rules.brats_grade_slices.output[0],
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{BRATS_GRADE}/train/model.pt",
        curves=report(
            f"{BRATS_GRADE}/train/curves.png",
            category="brats_grade",
            labels={"figure": "training curves"},
        ),
    log:
        f"{LOGS}/brats_grade_train.log",
    benchmark:
        f"{BENCH}/brats_grade_train.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        train=BRATS_GRADE_CFG["train"],
        aggregate=BRATS_GRADE_CFG["aggregate"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_grade_train.py"


rule brats_grade_evaluate:
    """Test cases: patient-level AUC, balanced accuracy, confusion matrix, ROC (slice AUC beside it)."""
    input:
        checkpoint=rules.brats_grade_train.output.checkpoint,
        slices=rules.brats_grade_slices.output[0],
        split=BRATS_SPLIT,
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{BRATS_GRADE}/evaluate/metrics.json",
        patients=report(
            f"{BRATS_GRADE}/evaluate/patients.csv",
            category="brats_grade",
            labels={"table": "test patients"},
        ),
        slices=f"{BRATS_GRADE}/evaluate/slice_predictions.csv",
        roc=report(
            f"{BRATS_GRADE}/evaluate/roc.png",
            category="brats_grade",
            labels={"figure": "ROC (test)"},
        ),
        confusion=report(
            f"{BRATS_GRADE}/evaluate/confusion.png",
            category="brats_grade",
            labels={"figure": "confusion matrix (test patients)"},
        ),
    log:
        f"{LOGS}/brats_grade_evaluate.log",
    benchmark:
        f"{BENCH}/brats_grade_evaluate.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        aggregate=BRATS_GRADE_CFG["aggregate"],
        evaluate=BRATS_GRADE_CFG["evaluate"],
        bootstrap=config["evaluation"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_grade_evaluate.py"


register_final(
    "brats_grade",
    metrics=rules.brats_grade_evaluate.output.metrics,
    outputs=[rules.brats_grade_evaluate.output.patients],
)
