# RSNA pneumonia (DICOM): ingest (manifest + patient split) -> metadata table and EDA plots ->
# preprocessing into one HDF5 -> the two-input CNN and its image-only comparison -> evaluation (with
# Grad-CAMs) -> prediction on a folder of new DICOMs (predict.rsna, docs/predict_rsna.md).
# Library: medflow.ingest.rsna, medflow.rsna.{metadata,eda,preprocess,train,evaluate,predict} (docs/rsna.md).
from medflow.lineage import checkpoint_path
from medflow.rsna.eda import PLOTS as RSNA_EDA_PLOTS

RSNA = f"{RESULTS}/rsna"
RSNA_RAW = raw_dir("rsna")
RSNA_VARIANTS = ["with_metadata", "image_only"]

if is_activated("rsna") and not synthetic() and not config["rsna"]["raw_dir"]:
    raise ValueError(
        "config rsna.raw_dir is empty: set it to your rsna-pneumonia-detection-challenge folder "
        "(see config/rsna.yaml), or switch the pipeline off with pipelines.rsna: false"
    )


rule rsna_ingest:
    """Validate the download, write the manifest (one row per patient) and the patient split."""
    input:
        labels=f"{RSNA_RAW}/stage_2_train_labels.csv",
        classes=f"{RSNA_RAW}/stage_2_detailed_class_info.csv",
        images=f"{RSNA_RAW}/stage_2_train_images",
    output:
        manifest=f"{RSNA}/ingest/manifest.csv",
        split=f"{RSNA}/ingest/split.csv",
    log:
        f"{LOGS}/rsna_ingest.log",
    benchmark:
        f"{BENCH}/rsna_ingest.tsv"
    conda:
        "../envs/medflow.yaml"
    params:
        ingest=config["rsna"]["ingest"],
        seed=config["seed"],
    script:
        "../workflow/scripts/rsna_ingest.py"


rule rsna_metadata:
    """Metadata table from every DICOM header, merged with both CSVs; decisions for bad headers."""
    input:
        manifest=rules.rsna_ingest.output.manifest,
    output:
        table=f"{RSNA}/metadata/metadata.csv",
        decisions=f"{RSNA}/metadata/decisions.json",
    log:
        f"{LOGS}/rsna_metadata.log",
    benchmark:
        f"{BENCH}/rsna_metadata.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["rsna"]["threads"]
    params:
        max_age_years=config["rsna"]["metadata"]["max_age_years"],
        max_excluded_fraction=config["rsna"]["metadata"]["max_excluded_fraction"],
    script:
        "../workflow/scripts/rsna_metadata.py"


rule rsna_eda:
    """Exploratory plots of the metadata table."""
    input:
        table=rules.rsna_metadata.output.table,
        manifest=rules.rsna_ingest.output.manifest,
    output:
        [report(f"{RSNA}/eda/{name}.png", category="rsna", subcategory="EDA") for name in RSNA_EDA_PLOTS],
    log:
        f"{LOGS}/rsna_eda.log",
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/rsna_eda.py"


rule rsna_preprocess:
    """Window, CLAHE, isotropic resampling, resize: every usable image into one HDF5 with its
    metadata features."""
    input:
        table=rules.rsna_metadata.output.table,
        manifest=rules.rsna_ingest.output.manifest,
    output:
        h5=f"{RSNA}/preprocess/images.h5",
        summary=f"{RSNA}/preprocess/summary.json",
    log:
        f"{LOGS}/rsna_preprocess.log",
    benchmark:
        f"{BENCH}/rsna_preprocess.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["rsna"]["threads"]
    params:
        preprocess=config["rsna"]["preprocess"],
        # the metadata table's (its ages over it are unknown): recorded with the features it shaped
        max_age_years=config["rsna"]["metadata"]["max_age_years"],
    script:
        "../workflow/scripts/rsna_preprocess.py"


rule rsna_train:
    """Train one variant: with_metadata (image + metadata) or image_only (the comparison row)."""
    input:
        h5=rules.rsna_preprocess.output.h5,
        split=rules.rsna_ingest.output.split,
        store=ancient(MLFLOW_STORE),
    output:
        checkpoint=f"{RSNA}/train/{{variant}}/model.pt",
        curves=report(f"{RSNA}/train/{{variant}}/curves.png", category="rsna", subcategory="training"),
    log:
        f"{LOGS}/rsna_train/{{variant}}.log",
    benchmark:
        f"{BENCH}/rsna_train/{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(RSNA_VARIANTS),
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        train=config["rsna"]["train"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/rsna_train.py"


rule rsna_evaluate:
    """AUC on the held-out (test) patients for both variants, ROC plot, one MLflow evaluation run."""
    input:
        h5=rules.rsna_preprocess.output.h5,
        split=rules.rsna_ingest.output.split,
        checkpoints=expand(rules.rsna_train.output.checkpoint, variant=RSNA_VARIANTS),
        store=ancient(MLFLOW_STORE),
    output:
        metrics=f"{RSNA}/evaluate/metrics.json",
        roc=report(f"{RSNA}/evaluate/roc.png", category="rsna"),
        predictions=f"{RSNA}/evaluate/predictions.csv",
        cams=directory(f"{RSNA}/evaluate/cams"),
    log:
        f"{LOGS}/rsna_evaluate.log",
    benchmark:
        f"{BENCH}/rsna_evaluate.tsv"
    conda:
        "../envs/medflow.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpu_resource(),
    params:
        evaluate=config["rsna"]["evaluate"],
        bootstrap=BOOTSTRAP,
        cams=config["evaluation"]["cams"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/rsna_evaluate.py"


register_final("rsna", metrics=rules.rsna_evaluate.output.metrics, outputs=rules.rsna_eda.output)

if is_predicting("rsna", "rsna"):

    rule rsna_predict:
        """P(pneumonia) per new DICOM with the checkpoint's own preprocessing: predictions, exclusions, CAMs."""
        input:
            images=predict_input("rsna"),
            checkpoint=str(
                checkpoint_path(config["predict"]["rsna"]["checkpoint"], f"{RSNA}/train/with_metadata/model.pt")
            ),
            store=ancient(MLFLOW_STORE),
        output:
            predictions=f"{RSNA}/predict/predictions.csv",
            excluded=f"{RSNA}/predict/excluded.csv",
            summary=f"{RSNA}/predict/summary.json",
            lineage=f"{RSNA}/predict/lineage.json",
            cams=directory(f"{RSNA}/predict/cams"),
        log:
            f"{LOGS}/rsna_predict.log",
        benchmark:
            f"{BENCH}/rsna_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        threads: config["compute"]["train_threads"]
        resources:
            gpu=gpu_resource(),
        params:
            # label 1 at the evaluation's threshold; preprocessing comes from the checkpoint, not from config
            predict={
                "threshold": config["rsna"]["evaluate"]["threshold"],
                "batch_size": config["rsna"]["evaluate"]["batch_size"],
                "cams": config["predict"]["cams"],
            },
            bf16=config["compute"]["bf16"],
        script:
            "../workflow/scripts/rsna_predict.py"

    register_predictions("rsna", rules.rsna_predict.output.summary, outputs=[rules.rsna_predict.output.predictions])
