# rsna rules: see docs and rules/common.smk for conventions.
