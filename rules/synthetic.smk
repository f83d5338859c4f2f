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
            cfg=synthetic_cfg("brats"),
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
            cfg=synthetic_cfg("mrnet"),
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
            cfg=synthetic_cfg("rsna"),
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
            cfg=synthetic_cfg("oct"),
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_oct.py"


# <<< synthetic_oct

# >>> synthetic_oct_predict
if synthetic():

    rule synthetic_oct_predict:
        """Unlabeled OCT scans to predict on: a folder tree of JPEG/PNG scans (grey and RGB), one truncated JPEG
        and one text file (excluded by oct_predict with their reasons)."""
        output:
            root=directory(f"{RESULTS}/synthetic/oct/predict/{PREDICT_SUBDIR['oct']}"),
        log:
            f"{LOGS}/synthetic_oct_predict.log",
        benchmark:
            f"{BENCH}/synthetic_oct_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            # only what shapes the scans: a change of the training tree's patients leaves them as they are
            cfg={
                k: v
                for k, v in config["synthetic"]["oct"].items()
                if k in ("predict", "height", "aspect", "jpeg_quality")
            },
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_oct_predict.py"


# <<< synthetic_oct_predict

# >>> synthetic_rsna_predict
if synthetic():

    rule synthetic_rsna_predict:
        """RSNA test images to predict on: stage_2_test_images/<patientId>.dcm, unlabeled, with a few bad files."""
        output:
            images=directory(f"{RESULTS}/synthetic/rsna/predict/{PREDICT_SUBDIR['rsna']}"),
        log:
            f"{LOGS}/synthetic_rsna_predict.log",
        benchmark:
            f"{BENCH}/synthetic_rsna_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            # all but the training set's size: the images are drawn as the training ones, with generators of their own
            cfg={k: v for k, v in config["synthetic"]["rsna"].items() if k != "n_patients"},
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_rsna_predict.py"


# <<< synthetic_rsna_predict

# >>> synthetic_brats_predict
if synthetic() and str(config["predict"]["brats"]["input"]) == "synthetic":
    from medflow.synthetic.brats import predict_expected_outputs as synthetic_brats_predict_outputs

    rule synthetic_brats_predict:
        """BraTS validation download of the configured release (e.g. MICCAI_BraTS2020_ValidationData): case
        folders with the four modalities in the release's names, no segmentation."""
        output:
            synthetic_brats_predict_outputs(config["synthetic"]["brats"], predict_input("brats")),
        log:
            f"{LOGS}/synthetic_brats_predict.log",
        benchmark:
            f"{BENCH}/synthetic_brats_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            cfg=config["synthetic"]["brats"],
            out=lambda wc, output: str(Path(output[0]).parents[1]),  # <folder>/<case>/<file>
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_brats_predict.py"


# <<< synthetic_brats_predict

# >>> synthetic_mrnet_predict
if synthetic() and str(config["predict"]["mrnet"]["input"]) == "synthetic":

    rule synthetic_mrnet_predict:
        """New MRNet exams without labels, in the download's layout: <folder>/{axial,coronal,sagittal}/NNNN.npy,
        the ids running on after the valid exams' (synthetic.mrnet.predict.n_exams of them)."""
        output:
            directory(predict_input("mrnet")),
        log:
            f"{LOGS}/synthetic_mrnet_predict.log",
        benchmark:
            f"{BENCH}/synthetic_mrnet_predict.tsv"
        conda:
            "../envs/medflow.yaml"
        params:
            # the whole block: the new exams' ids follow n_train + n_valid, and they are drawn like the others
            cfg=config["synthetic"]["mrnet"],
            seed=config["seed"],
        script:
            "../workflow/scripts/synthetic_mrnet_predict.py"


# <<< synthetic_mrnet_predict
