# OCT retina (Kermany OCT2017): ingest -> VGG16 transfer learning (frozen features, new classifier)
# -> evaluation on the test folder. Library: medflow.ingest.oct, medflow.oct (docs/oct.md).
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
        bootstrap=config["evaluation"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/oct_evaluate.py"


register_final("oct", metrics=rules.oct_evaluate.output.metrics, outputs=[rules.oct_evaluate.output.predictions])
