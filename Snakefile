# medflow: raw public medical-imaging downloads -> trained, evaluated, tracked models.
# Run: snakemake --cores 8 --resources gpu=1   (see README.md)
import os

from snakemake.utils import min_version

min_version("9.0")


# Relative to the Snakefile, so `--directory` can put results anywhere.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/tracking.smk"
include: "rules/synthetic.smk"
include: "rules/brats.smk"
include: "rules/brats_segmentation.smk"
include: "rules/brats_grade.smk"
include: "rules/mrnet.smk"
include: "rules/rsna.smk"
include: "rules/oct.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# `snakemake predict`: only the predictions on new data (predict.<data set>.input), with what they need.
rule predict:
    input:
        [f for stage, files in FINAL_OUTPUTS.items() if stage.endswith("_predict") for f in files],
