# The MLflow tracking store, created once before any training or evaluation job starts.


rule mlflow_store:
    """Create the tracking store and every experiment once, before any job runs: parallel jobs
    that open a not-yet-created sqlite store at once corrupt it."""
    localrule: True
    output:
        MLFLOW_STORE,
    params:
        experiments=list(tracking.EXPERIMENTS),
    log:
        f"{LOGS}/mlflow_store.log",
    conda:
        "../envs/medflow.yaml"
    script:
        "../workflow/scripts/mlflow_store.py"
