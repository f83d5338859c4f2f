# BraTS grade, LGG vs HGG: axial slices of the stacked cases (4 modalities as channels) -> ResNet18
# with a 4-channel conv1 -> patient-level evaluation (with Grad-CAMs) -> P(HGG) of new cases. Reads
# BRATS_SPLIT and BRATS_STACK (rules/brats.smk), and for prediction the segmentation's new-case outputs
# (rules/brats_segmentation.smk). Library: medflow.grade (docs/brats_grade.md, docs/predict_brats.md).
from medflow.lineage import checkpoint_path

BRATS_GRADE = f"{BRATS}/grade"
BRATS_GRADE_CFG = config["brats"]["grade"]
# The headline bootstrap's keys of `evaluation` (its `cams` reaches the rule apart, so it reruns only the figures'
# stage it shapes).

# Grades exist only where the release ships a grade file (2020's name_mapping.csv): say so at start-up.
if is_activated("brats_grade") and not BRATS_RELEASE.has_grades:
    raise ValueError(
        f"pipelines.brats_grade needs LGG/HGG grades, and BraTS {BRATS_RELEASE.name} has no grade file "
        f"(brats.release): set pipelines.brats_grade: false, or use a release with grades "
        f"({', '.join(r.name for r in releases.RELEASES.values() if r.has_grades)})"
    )
# New cases' slices are chosen from the tumour the segmentation model predicts: no grade prediction without it.
if is_predicting("brats", "brats_grade") and not is_activated("brats_segmentation"):
    raise ValueError(
        "predict.brats.input is set and pipelines.brats_grade is on, but pipelines.brats_segmentation is off: "
        "grade prediction picks each new case's slices from the segmentation model's tumour. Switch "
        "pipelines.brats_segmentation on, or set predict.brats.input: '' (no BraTS prediction)"
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
        # Recorded in the checkpoint: what shaped the stacks its slices came from (prediction compares them).
        stack_preprocessing=BRATS_SEGMENTATION_PREPROCESSING,
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_grade_train.py"


rule brats_grade_evaluate:
    """Test cases: patient-level AUC, balanced accuracy, confusion matrix, ROC (slice AUC beside it), Grad-CAMs."""
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
        cams=report(
            directory(f"{BRATS_GRADE}/evaluate/cams"),
            patterns=["{case}.png"],
            category="brats_grade",
            labels={"figure": "Grad-CAM (test patient)", "case": "{case}"},
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
        bootstrap=BOOTSTRAP,
        cams=config["evaluation"]["cams"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_grade_evaluate.py"


register_final(
    "brats_grade",
    metrics=rules.brats_grade_evaluate.output.metrics,
    outputs=[rules.brats_grade_evaluate.output.patients],
)


# The configured grade checkpoint (predict.brats.grade_checkpoint), or the one this workflow trains.
BRATS_GRADE_CHECKPOINT = str(
    checkpoint_path(config["predict"]["brats"]["grade_checkpoint"], rules.brats_grade_train.output.checkpoint)
)


rule brats_grade_predict:
    """P(HGG) of every new case: slices chosen as in training from the predicted tumour, aggregated as in
    evaluation; excluded cases with their reason, Grad-CAMs, summary, lineage, one MLflow run."""
    input:
        stacks=lambda wc: expand(BRATS_PREDICT_STACK, case=brats_predict_cases()),
        segmentations=lambda wc: expand(BRATS_PREDICT_SEG, case=brats_predict_cases()),
        checkpoint=BRATS_GRADE_CHECKPOINT,
        segmentation_checkpoint=BRATS_SEGMENTATION_CHECKPOINT,
        store=ancient(MLFLOW_STORE),
    output:
        predictions=report(
            f"{BRATS_GRADE}/predict/predictions.csv",
            category="brats_grade",
            labels={"table": "P(HGG) per new case"},
        ),
        excluded=f"{BRATS_GRADE}/predict/excluded.csv",
        cams=report(
            directory(f"{BRATS_GRADE}/predict/cams"),
            patterns=["{case}.png"],
            category="brats_grade",
            labels={"figure": "Grad-CAM (new case)", "case": "{case}"},
        ),
        summary=f"{BRATS_GRADE}/predict/summary.json",
        lineage=f"{BRATS_GRADE}/predict/lineage.json",
    log:
        f"{LOGS}/brats_grade_predict.log",
    benchmark:
        f"{BENCH}/brats_grade_predict.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        aggregate=BRATS_GRADE_CFG["aggregate"],
        threshold=BRATS_GRADE_CFG["evaluate"]["threshold"],
        batch_size=BRATS_GRADE_CFG["evaluate"]["batch_size"],
        cams=config["predict"]["cams"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_grade_predict.py"


if is_predicting("brats", "brats_grade"):
    register_predictions(
        "brats_grade",
        summary=rules.brats_grade_predict.output.summary,
        outputs=[rules.brats_grade_predict.output.predictions],
    )
