# MRNet knee MRI: ingest -> one MRNet per task x plane x fold -> stacking + evaluation per task -> summary.
# The nine task x plane models (and their folds) are independent jobs: they run in parallel as far as
# the `gpu` resource allows, locally or on SLURM.

MRNET = f"{RESULTS}/mrnet"
MRNET_TASKS = ["abnormal", "acl", "meniscus"]
MRNET_PLANES = ["axial", "coronal", "sagittal"]
MRNET_TRAIN_DIR = f"{MRNET}/{{task}}/{{plane}}/fold_{{fold}}"
# Training folds the stacker needs: each of the k folds (out-of-fold stacking only), and `all`.
MRNET_OOF = config["mrnet"]["stacking"]["fit_on"] == "out_of_fold"
MRNET_FOLDS = [str(k) for k in range(config["mrnet"]["folds"]) if MRNET_OOF] + ["all"]


rule mrnet_ingest:
    """Validate the download; write the exam manifest and the fold file every later stage reads."""
    input:
        [f"{raw_dir('mrnet')}/{split}-{task}.csv" for split in ("train", "valid") for task in MRNET_TASKS],
    output:
        manifest=f"{MRNET}/manifest.csv",
        folds=f"{MRNET}/folds.csv",
    params:
        k=config["mrnet"]["folds"],
        seed=config["seed"],
    log:
        f"{LOGS}/mrnet_ingest.log",
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/mrnet_ingest.py"


rule mrnet_train:
    """One MRNet per task x plane x fold (`all` or a held-out fold); predicts the exams it did not train on."""
    input:
        manifest=rules.mrnet_ingest.output.manifest,
        folds=rules.mrnet_ingest.output.folds,
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{MRNET_TRAIN_DIR}/model.pt",
        predictions=f"{MRNET_TRAIN_DIR}/predictions.csv",
        summary=f"{MRNET_TRAIN_DIR}/train.json",
        curves=f"{MRNET_TRAIN_DIR}/curves.png",
    params:
        root=raw_dir("mrnet"),
        model=config["mrnet"]["model"],
        train=config["mrnet"]["train"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    log:
        f"{LOGS}/mrnet_train/{{task}}_{{plane}}_{{fold}}.log",
    benchmark:
        f"{BENCH}/mrnet_train/{{task}}_{{plane}}_{{fold}}.tsv"
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/mrnet_train.py"


rule mrnet_evaluate:
    """Per task: fit the logistic-regression stacker over the planes, evaluate planes and stack on valid."""
    input:
        folds=rules.mrnet_ingest.output.folds,
        # plane by plane, fold by fold: the order the script reads them in
        predictions=expand(f"{MRNET_TRAIN_DIR}/predictions.csv", plane=MRNET_PLANES, fold=MRNET_FOLDS, allow_missing=True),
        summaries=expand(f"{MRNET_TRAIN_DIR}/train.json", plane=MRNET_PLANES, fold=MRNET_FOLDS, allow_missing=True),
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{MRNET}/{{task}}/metrics.json",
        predictions=f"{MRNET}/{{task}}/predictions.csv",
        roc=report(f"{MRNET}/{{task}}/roc.png", category="mrnet", subcategory="{task}", labels={"task": "{task}", "figure": "ROC"}),
        stacker=f"{MRNET}/{{task}}/stacker.json",
    params:
        planes=MRNET_PLANES,
        folds=MRNET_FOLDS,
        fit_on=config["mrnet"]["stacking"]["fit_on"],
        C=config["mrnet"]["stacking"]["C"],
        class_weight=config["mrnet"]["stacking"]["class_weight"],
        seed=config["seed"],
    log:
        f"{LOGS}/mrnet_evaluate/{{task}}.log",
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/mrnet_evaluate.py"


rule mrnet_summary:
    """One table over the three tasks: valid AUC per plane and stacked, stacked accuracy/sensitivity/specificity."""
    input:
        expand(f"{MRNET}/{{task}}/metrics.json", task=MRNET_TASKS),
    output:
        report(f"{MRNET}/summary.csv", category="mrnet", labels={"table": "valid AUC per task"}),
    params:
        tasks=MRNET_TASKS,
    log:
        f"{LOGS}/mrnet_summary.log",
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/mrnet_summary.py"


register_final(
    "mrnet",
    [f"{MRNET}/summary.csv"]
    + expand(f"{MRNET}/{{task}}/{{name}}", task=MRNET_TASKS, name=["metrics.json", "predictions.csv", "roc.png"]),
)
