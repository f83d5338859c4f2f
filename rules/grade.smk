# BraTS grade, LGG vs HGG: axial slices of the stacked cases (4 modalities as channels) -> ResNet18
# with a 4-channel conv1 -> patient-level evaluation. Reads BRATS_SPLIT and BRATS_STACK of the
# brats_prep block (rules/brats.smk). Library: medflow.grade (docs/brats_grade.md).
GRADE = f"{RESULTS}/brats/grade"
GRADE_CFG = config["grade"]


rule grade_slices:
    """Tumour slices of every case (all, or top-k by area), standardised per channel, in one HDF5."""
    input:
        stacks=lambda wc: expand(BRATS_STACK, case=brats_cases()),
        split=BRATS_SPLIT,
    output:
        f"{GRADE}/slices.h5",
    params:
        slices=GRADE_CFG["slices"],
    log:
        f"{LOGS}/grade_slices.log",
    benchmark:
        f"{BENCH}/grade_slices.tsv"
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/grade_slices.py"


rule grade_train:
    """ResNet18 (4-channel conv1, 2-way head) via medflow.train.fit, best patient-level val AUC."""
    input:
        slices=rules.grade_slices.output[0],
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{GRADE}/model.pt",
        curves=report(f"{GRADE}/curves.png", category="brats_grade", labels={"figure": "training curves"}),
    params:
        train=GRADE_CFG["train"],
        aggregate=GRADE_CFG["aggregate"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    log:
        f"{LOGS}/grade_train.log",
    benchmark:
        f"{BENCH}/grade_train.tsv"
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/grade_train.py"


rule grade_evaluate:
    """Test cases: patient-level AUC, balanced accuracy, confusion matrix, ROC (slice AUC beside it)."""
    input:
        checkpoint=rules.grade_train.output.checkpoint,
        slices=rules.grade_slices.output[0],
        split=BRATS_SPLIT,
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{GRADE}/metrics.json",
        patients=report(f"{GRADE}/patients.csv", category="brats_grade", labels={"table": "test patients"}),
        slices=f"{GRADE}/slice_predictions.csv",
        roc=report(f"{GRADE}/roc.png", category="brats_grade", labels={"figure": "ROC (test)"}),
        confusion=report(f"{GRADE}/confusion.png", category="brats_grade", labels={"figure": "confusion matrix (test patients)"}),
    params:
        aggregate=GRADE_CFG["aggregate"],
        evaluate=GRADE_CFG["evaluate"],
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    log:
        f"{LOGS}/grade_evaluate.log",
    benchmark:
        f"{BENCH}/grade_evaluate.tsv"
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/grade_evaluate.py"


register_final(
    "brats_grade",
    [rules.grade_evaluate.output.metrics, rules.grade_evaluate.output.roc, rules.grade_evaluate.output.confusion, rules.grade_evaluate.output.patients],
)
