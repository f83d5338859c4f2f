# OCT retina (Kermany OCT2017): ingest -> VGG16 transfer learning (frozen features, new classifier)
# -> evaluation on the test folder (with Grad-CAMs) -> prediction on a folder of new scans (predict.oct).
# Library: medflow.ingest.oct, medflow.oct (docs/oct.md, docs/predict_oct.md).
from medflow.ingest.oct import predict_inputs as oct_predict_inputs
from medflow.lineage import checkpoint_path as oct_checkpoint_path

OCT = f"{RESULTS}/oct"
OCT_CFG = config["oct"]


rule oct_ingest:
    """Validate the OCT2017 tree (names, class folders, readable JPEGs); manifest and split file."""
    input:
        lambda wc: raw_dir("oct"),
    output:
        manifest=f"{OCT}/ingest/manifest.csv",
        split=f"{OCT}/ingest/split.csv",
    log:
        f"{LOGS}/oct_ingest.log",
    benchmark:
        f"{BENCH}/oct_ingest.tsv"
    conda:
        "../envs/medflow.yaml"
    params:
        ingest=OCT_CFG["ingest"],
        seed=config["seed"],
    script:
        "../workflow/scripts/oct_ingest.py"


rule oct_train:
    """VGG16 with frozen pretrained layers and a new LogSoftmax head (NLL, Adam) via medflow.train.fit."""
    input:
        split=rules.oct_ingest.output.split,
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{OCT}/train/model.pt",
        curves=report(f"{OCT}/train/curves.png", category="oct", labels={"figure": "training curves"}),
    log:
        f"{LOGS}/oct_train.log",
    benchmark:
        f"{BENCH}/oct_train.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        root=lambda wc: raw_dir("oct"),
        train=OCT_CFG["train"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/oct_train.py"


rule oct_evaluate:
    """Test split: accuracy, per-class precision/recall, confusion matrix, top-k predictions per image."""
    input:
        checkpoint=rules.oct_train.output.checkpoint,
        split=rules.oct_ingest.output.split,
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{OCT}/evaluate/metrics.json",
        predictions=report(
            f"{OCT}/evaluate/predictions.csv", category="oct", labels={"table": "test predictions (top-k)"}
        ),
        confusion=report(f"{OCT}/evaluate/confusion.png", category="oct", labels={"figure": "confusion matrix (test)"}),
        cams=directory(f"{OCT}/evaluate/cams"),
    log:
        f"{LOGS}/oct_evaluate.log",
    benchmark:
        f"{BENCH}/oct_evaluate.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        root=lambda wc: raw_dir("oct"),
        evaluate=OCT_CFG["evaluate"],
        bootstrap=BOOTSTRAP,
        cams=config["evaluation"]["cams"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/oct_evaluate.py"


register_final("oct", metrics=rules.oct_evaluate.output.metrics, outputs=[rules.oct_evaluate.output.predictions])


if is_predicting("oct", "oct"):
    OCT_PREDICT = config["predict"]["oct"]

    rule oct_predict:
        """New scans (any folder tree of JPEG/PNG): class, probabilities and top-k per scan, the files excluded
        with their reasons, Grad-CAMs of a few; the checkpoint's recorded preprocessing (docs/predict_oct.md).
        A real folder's files are listed as inputs, so adding, removing or changing a scan reruns this job."""
        input:
            checkpoint=lambda wc: str(oct_checkpoint_path(OCT_PREDICT["checkpoint"], rules.oct_train.output.checkpoint)),
            scans=lambda wc: oct_predict_inputs(predict_input("oct"), OCT_PREDICT["input"] == "synthetic"),
            store=ancient(MLFLOW_STORE),
        output:
            predictions=report(
                f"{OCT}/predict/predictions.csv", category="oct", labels={"table": "new scans: predictions"}
            ),
            excluded=f"{OCT}/predict/excluded.csv",
            cams=directory(f"{OCT}/predict/cams"),
            summary=f"{OCT}/predict/summary.json",
            lineage=f"{OCT}/predict/lineage.json",
        log:
            f"{LOGS}/oct_predict.log",
        benchmark:
            f"{BENCH}/oct_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["compute"]["train_threads"]
        resources:
            gpu=gpu_resource(),
        params:
            folder=lambda wc: predict_input("oct"),
            evaluate=OCT_CFG["evaluate"],
            cams=config["predict"]["cams"],
            bf16=config["compute"]["bf16"],
        script:
            "../workflow/scripts/oct_predict.py"

    register_predictions("oct", rules.oct_predict.output.summary, outputs=[rules.oct_predict.output.predictions])
