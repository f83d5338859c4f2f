# Synthetic raw data in the exact public layouts, written under results/synthetic/<dataset>/ when
# `synthetic.enabled` is true (the default). One rule per data set; deterministic from `seed`.

# >>> synthetic_brats
if synthetic():
    from medflow.synthetic.brats import expected_outputs as synthetic_brats_outputs

    rule synthetic_brats:
        """BraTS training download of the configured release (BRATS_RELEASE): case folders, the five NIfTI
        files of each in the release's names and labels, and the grade file where the release has one."""
        output:
            synthetic_brats_outputs(config["synthetic"]["brats"], raw_dir("brats")),
        log:
            f"{LOGS}/synthetic_brats.log",
        benchmark:
            f"{BENCH}/synthetic_brats.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            cfg=config["synthetic"]["brats"],
            raw=lambda wc, output: str(Path(output[0]).parents[1]),  # <raw>/<case>/<file>
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_brats.py"


# <<< synthetic_brats

# >>> synthetic_mrnet
if synthetic():

    rule synthetic_mrnet:
        """MRNet-v1.0 download: {train,valid}/{axial,coronal,sagittal}/NNNN.npy, {train,valid}-{task}.csv."""
        output:
            labels=[f"{raw_dir('mrnet')}/{split}-{task}.csv" for split in ("train", "valid") for task in TASKS],
        log:
            f"{LOGS}/synthetic_mrnet.log",
        benchmark:
            f"{BENCH}/synthetic_mrnet.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            cfg=config["synthetic"]["mrnet"],
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_mrnet.py"


# <<< synthetic_mrnet

# >>> synthetic_rsna
if synthetic():

    rule synthetic_rsna:
        """RSNA pneumonia download: DICOMs, stage_2_train_labels.csv, stage_2_detailed_class_info.csv."""
        output:
            labels=f"{raw_dir('rsna')}/stage_2_train_labels.csv",
            classes=f"{raw_dir('rsna')}/stage_2_detailed_class_info.csv",
            images=directory(f"{raw_dir('rsna')}/stage_2_train_images"),
        log:
            f"{LOGS}/synthetic_rsna.log",
        benchmark:
            f"{BENCH}/synthetic_rsna.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            cfg=config["synthetic"]["rsna"],
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_rsna.py"


# <<< synthetic_rsna

# >>> synthetic_oct
if synthetic():

    rule synthetic_oct:
        """Kermany OCT2017 download: {train,val,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg."""
        output:
            root=directory(raw_dir("oct")),
        log:
            f"{LOGS}/synthetic_oct.log",
        benchmark:
            f"{BENCH}/synthetic_oct.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            cfg=config["synthetic"]["oct"],
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_oct.py"


# <<< synthetic_oct
