# BraTS segmentation: 3D U-Net on the patches of the train cases (best epoch by Dice on the val cases'
# patches), then sliding-window inference over the whole stacked test cases. Reads BRATS_SPLIT,
# BRATS_PATCHES and BRATS_STACK (rules/brats.smk). Library: medflow.segmentation
# (docs/brats_segmentation.md). Both rules take every case's file: the split file, written by
# brats_ingest at run time, says which case belongs where.
# Prediction on new, unlabeled cases (predict.brats.input, docs/predict_brats.md): per case, the training
# cases' preprocessing and evaluation's sliding window -> a submission NIfTI; then the volumes table.
from medflow.lineage import checkpoint_path

BRATS_SEGMENTATION = f"{BRATS}/segmentation"
BRATS_SEGMENTATION_CFG = config["brats"]["segmentation"]


rule brats_segmentation_train:
    """3D U-Net with soft Dice loss on the patch HDF5s, through medflow.train.fit (resumable)."""
    input:
        patches=lambda wc: expand(BRATS_PATCHES, case=brats_cases()),
        split=BRATS_SPLIT,
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{BRATS_SEGMENTATION}/train/model.pt",
        curves=report(
            f"{BRATS_SEGMENTATION}/train/curves.png",
            category="brats_segmentation",
            labels={"figure": "training curves"},
        ),
    log:
        f"{LOGS}/brats_segmentation_train.log",
    benchmark:
        f"{BENCH}/brats_segmentation_train.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        train=BRATS_SEGMENTATION_CFG["train"],
        loader_workers=BRATS_SEGMENTATION_CFG["train"]["loader_workers"],
        preprocessing=BRATS_SEGMENTATION_PREPROCESSING,
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_segmentation_train.py"


rule brats_segmentation_evaluate:
    """Dice/HD95 of the BraTS regions and labels on the test cases, NIfTI predictions, overlays."""
    input:
        checkpoint=rules.brats_segmentation_train.output.checkpoint,
        stacks=lambda wc: expand(BRATS_STACK, case=brats_cases()),
        split=BRATS_SPLIT,
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{BRATS_SEGMENTATION}/evaluate/metrics.json",
        per_case=report(
            f"{BRATS_SEGMENTATION}/evaluate/per_case.csv",
            category="brats_segmentation",
            labels={"table": "Dice and HD95 per test case"},
        ),
        predictions=directory(f"{BRATS_SEGMENTATION}/evaluate/predictions"),
        overlays=report(
            directory(f"{BRATS_SEGMENTATION}/evaluate/overlays"),
            patterns=["{case}.png"],
            category="brats_segmentation",
            labels={"figure": "overlay", "case": "{case}"},
        ),
    log:
        f"{LOGS}/brats_segmentation_evaluate.log",
    benchmark:
        f"{BENCH}/brats_segmentation_evaluate.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        evaluate=BRATS_SEGMENTATION_CFG["evaluate"],
        bootstrap=BOOTSTRAP,
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_segmentation_evaluate.py"


register_final("brats_segmentation", metrics=rules.brats_segmentation_evaluate.output.metrics)


# Outputs of each new case (read by brats_grade_predict too: the stack and the predicted labels).
BRATS_PREDICT = f"{BRATS_SEGMENTATION}/predict"
BRATS_PREDICT_SEG = f"{BRATS_PREDICT}/submission/{{case}}{BRATS_RELEASE.submission_suffix}"
BRATS_PREDICT_STACK = f"{BRATS_PREDICT}/stack/{{case}}.h5"
BRATS_PREDICT_CASE = f"{BRATS_PREDICT}/cases/{{case}}.json"
BRATS_VOLUMES = f"{BRATS_SEGMENTATION}/volumes"
# The configured checkpoint, or the one this workflow trains.
BRATS_SEGMENTATION_CHECKPOINT = str(
    checkpoint_path(
        config["predict"]["brats"]["segmentation_checkpoint"], rules.brats_segmentation_train.output.checkpoint
    )
)


rule brats_segmentation_predict:
    """One new case: validate (no seg), N4, trim, stack as in training; sliding-window U-Net as in evaluation;
    labels in the release's values on the raw grid (the BraTS submission format), volumes JSON."""
    input:
        unpack(lambda wc: brats_predict_raw(wc.case)),
        checkpoint=BRATS_SEGMENTATION_CHECKPOINT,
        store=ancient(MLFLOW_STORE),
    output:
        submission=BRATS_PREDICT_SEG,
        stack=BRATS_PREDICT_STACK,
        case=BRATS_PREDICT_CASE,
    log:
        f"{LOGS}/brats_segmentation_predict/{{case}}.log",
    benchmark:
        f"{BENCH}/brats_segmentation_predict/{{case}}.tsv"
    wildcard_constraints:
        case=BRATS_RELEASE.predict_pattern,  # validation ids (BraTS20_Validation_NNN) or training ones
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        input=lambda wc: predict_input("brats"),
        preprocessing=BRATS_SEGMENTATION_PREPROCESSING,
        # Evaluation's sliding window; n_overlays draws figures, not predictions.
        inference={k: v for k, v in BRATS_SEGMENTATION_CFG["evaluate"].items() if k != "n_overlays"},
        release=BRATS_RELEASE.name,
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_segmentation_predict.py"


rule brats_segmentation_volumes:
    """Tumour volumes (ml) of every predicted case in one CSV, the prediction summary and lineage, overlay
    PNGs, one MLflow prediction run."""
    input:
        cases=lambda wc: expand(BRATS_PREDICT_CASE, case=brats_predict_cases()),
        stacks=lambda wc: expand(BRATS_PREDICT_STACK, case=brats_predict_cases()),
        submissions=lambda wc: expand(BRATS_PREDICT_SEG, case=brats_predict_cases()),
        store=ancient(MLFLOW_STORE),
    output:
        volumes=report(
            f"{BRATS_VOLUMES}/volumes.csv",
            category="brats_segmentation",
            labels={"table": "predicted tumour volumes per new case"},
        ),
        summary=f"{BRATS_VOLUMES}/summary.json",
        lineage=f"{BRATS_VOLUMES}/lineage.json",
        figures=report(
            directory(f"{BRATS_VOLUMES}/figures"),
            patterns=["{case}.png"],
            category="brats_segmentation",
            labels={"figure": "prediction on a new case", "case": "{case}"},
        ),
    log:
        f"{LOGS}/brats_segmentation_volumes.log",
    conda:
        "../envs/medflow.yaml"
    # It imports the segmentation library (overlays), which picks a torch device: a job that may touch
    # one claims it, as every such rule does (tests/workflow/test_gpu_scheduling.py).
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        n_overlays=BRATS_SEGMENTATION_CFG["evaluate"]["n_overlays"],
    script:
        "../workflow/scripts/brats_segmentation_volumes.py"


if is_predicting("brats", "brats_segmentation"):
    register_predictions(
        "brats_segmentation",
        summary=rules.brats_segmentation_volumes.output.summary,
        outputs=[rules.brats_segmentation_volumes.output.volumes, rules.brats_segmentation_volumes.output.lineage],
    )
