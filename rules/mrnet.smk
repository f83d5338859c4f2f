# MRNet knee MRI: ingest -> one MRNet per task x plane x fold -> stacking + evaluation per task -> summary;
# prediction on new exams with the nine all-train models and three stackers (docs/predict_mrnet.md).
# The nine task x plane models (and their folds) are independent jobs: they run in parallel as far as
# the `gpu` resource allows, locally or on SLURM. Library: medflow.ingest.mrnet, medflow.mrnet (docs/mrnet.md).
from medflow.ingest.mrnet import PLANES as MRNET_PLANES
from medflow.ingest.mrnet import TASKS as MRNET_TASKS

MRNET = f"{RESULTS}/mrnet"
MRNET_CFG = config["mrnet"]
MRNET_TRAIN = f"{MRNET}/train/{{task}}/{{plane}}/fold_{{fold}}"
MRNET_EVALUATE = f"{MRNET}/evaluate/{{task}}"
# Training folds the stacker needs: each of the k folds (out-of-fold stacking only), and `all`.
MRNET_OOF = MRNET_CFG["evaluate"]["fit_on"] == "out_of_fold"
MRNET_FOLDS = [str(k) for k in range(MRNET_CFG["ingest"]["folds"]) if MRNET_OOF] + ["all"]


rule mrnet_ingest:
    """Validate the download; write the exam manifest and the fold file every later stage reads."""
    input:
        [f"{raw_dir('mrnet')}/{split}-{task}.csv" for split in ("train", "valid") for task in MRNET_TASKS],
    output:
        manifest=f"{MRNET}/ingest/manifest.csv",
        folds=f"{MRNET}/ingest/folds.csv",
    log:
        f"{LOGS}/mrnet_ingest.log",
    conda:
        "../envs/medflow.yaml"
    params:
        ingest=MRNET_CFG["ingest"],
        seed=config["seed"],
    script:
        "../workflow/scripts/mrnet_ingest.py"


rule mrnet_train:
    """One MRNet per task x plane x fold (`all` or a held-out fold); predicts the exams it did not train on."""
    input:
        manifest=rules.mrnet_ingest.output.manifest,
        folds=rules.mrnet_ingest.output.folds,
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{MRNET_TRAIN}/model.pt",
        predictions=f"{MRNET_TRAIN}/predictions.csv",
        summary=f"{MRNET_TRAIN}/train.json",
        curves=f"{MRNET_TRAIN}/curves.png",
    log:
        f"{LOGS}/mrnet_train/{{task}}_{{plane}}_{{fold}}.log",
    benchmark:
        f"{BENCH}/mrnet_train/{{task}}_{{plane}}_{{fold}}.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        root=raw_dir("mrnet"),
        train=MRNET_CFG["train"],
        loader_workers=MRNET_CFG["train"]["loader_workers"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/mrnet_train.py"


rule mrnet_evaluate:
    """Per task: fit the logistic-regression stacker over the planes, evaluate planes and stack on valid."""
    input:
        folds=rules.mrnet_ingest.output.folds,
        # plane by plane, fold by fold: the order the script reads them in
        predictions=expand(f"{MRNET_TRAIN}/predictions.csv", plane=MRNET_PLANES, fold=MRNET_FOLDS, allow_missing=True),
        summaries=expand(f"{MRNET_TRAIN}/train.json", plane=MRNET_PLANES, fold=MRNET_FOLDS, allow_missing=True),
        # the all-train models, plane by plane: hashed into the stacker, and drawn in the class-activation maps
        checkpoints=expand(f"{MRNET_TRAIN}/model.pt", plane=MRNET_PLANES, fold="all", allow_missing=True),
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{MRNET_EVALUATE}/metrics.json",
        predictions=f"{MRNET_EVALUATE}/predictions.csv",
        roc=report(
            f"{MRNET_EVALUATE}/roc.png",
            category="mrnet",
            subcategory="{task}",
            labels={"task": "{task}", "figure": "ROC"},
        ),
        stacker=f"{MRNET_EVALUATE}/stacker.json",
        cams=directory(f"{MRNET_EVALUATE}/cams"),
    log:
        f"{LOGS}/mrnet_evaluate/{{task}}.log",
    conda:
        "../envs/medflow.yaml"
    params:
        planes=MRNET_PLANES,
        folds=MRNET_FOLDS,
        evaluate=MRNET_CFG["evaluate"],
        bootstrap=BOOTSTRAP,
        root=raw_dir("mrnet"),
        cams=config["evaluation"]["cams"],
        seed=config["seed"],
    script:
        "../workflow/scripts/mrnet_evaluate.py"


rule mrnet_summary:
    """One table over the three tasks (valid AUC per plane and stacked, stacked accuracy/sensitivity/
    specificity) and the pipeline's headline metrics."""
    input:
        expand(f"{MRNET_EVALUATE}/metrics.json", task=MRNET_TASKS),
    output:
        table=report(f"{MRNET}/summary/summary.csv", category="mrnet", labels={"table": "valid AUC per task"}),
        metrics=f"{MRNET}/summary/metrics.json",
    log:
        f"{LOGS}/mrnet_summary.log",
    conda:
        "../envs/medflow.yaml"
    params:
        tasks=MRNET_TASKS,
    script:
        "../workflow/scripts/mrnet_summary.py"


if is_predicting("mrnet", "mrnet"):
    # The nine all-train models and three stackers: this workflow's, or those of the results/mrnet folder named
    # in predict.mrnet.models (its train/ and evaluate/ subfolders).
    MRNET_MODELS = config["predict"]["mrnet"]["models"] or MRNET

    rule mrnet_predict:
        """New exams (a folder of {axial,coronal,sagittal}/<exam>.npy or a CSV of paths): per exam the three planes'
        and the stacked probabilities of each task, the challenge's three-column file, excluded exams, CAMs."""
        input:
            exams=predict_input("mrnet"),
            checkpoints=[
                f"{MRNET_MODELS}/train/{task}/{plane}/fold_all/model.pt"
                for task in MRNET_TASKS
                for plane in MRNET_PLANES
            ],
            stackers=[f"{MRNET_MODELS}/evaluate/{task}/stacker.json" for task in MRNET_TASKS],
            store=ancient(MLFLOW_STORE),
        output:
            predictions=report(
                f"{MRNET}/predict/predictions.csv", category="mrnet", labels={"table": "predictions on new exams"}
            ),
            challenge=f"{MRNET}/predict/predictions_challenge.csv",
            excluded=f"{MRNET}/predict/excluded.csv",
            cams=directory(f"{MRNET}/predict/cams"),
            summary=f"{MRNET}/predict/summary.json",
            lineage=f"{MRNET}/predict/lineage.json",
        log:
            f"{LOGS}/mrnet_predict.log",
        benchmark:
            f"{BENCH}/mrnet_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["compute"]["train_threads"]
        resources:
            gpu=gpu_resource(),
        params:
            models=config["predict"]["mrnet"]["models"],
            cams=config["predict"]["cams"],
            batch_slices=MRNET_CFG["train"]["batch_slices"],
            tasks=MRNET_TASKS,
            planes=MRNET_PLANES,
            bf16=config["compute"]["bf16"],
            seed=config["seed"],
        script:
            "../workflow/scripts/mrnet_predict.py"

    register_predictions(
        "mrnet",
        rules.mrnet_predict.output.summary,
        outputs=[rules.mrnet_predict.output.predictions, rules.mrnet_predict.output.challenge],
    )


register_final(
    "mrnet",
    metrics=rules.mrnet_summary.output.metrics,
    outputs=[rules.mrnet_summary.output.table]
    + expand(f"{MRNET_EVALUATE}/{{name}}", task=MRNET_TASKS, name=["metrics.json", "predictions.csv", "roc.png"]),
)
