# BraTS segmentation: 3D U-Net on the patches of the train cases (best epoch by Dice on the val cases'
# patches), then sliding-window inference over the whole stacked test cases. Reads BRATS_SPLIT,
# BRATS_PATCHES and BRATS_STACK (rules/brats.smk). Library: medflow.segmentation
# (docs/brats_segmentation.md). Both rules take every case's file: the split file, written by
# brats_ingest at run time, says which case belongs where.
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
        bootstrap=config["evaluation"],
        seed=config["seed"],
        bf16=config["compute"]["bf16"],
    script:
        "../workflow/scripts/brats_segmentation_evaluate.py"


register_final("brats_segmentation", metrics=rules.brats_segmentation_evaluate.output.metrics)
