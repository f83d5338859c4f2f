# The MLflow tracking store, created once before any training or evaluation job starts.


rule mlflow_store:
    output:
        MLFLOW_STORE,
    log:
        f"{LOGS}/mlflow_store.log",
    """Create the tracking store and every experiment once, before any job runs: parallel jobs
    that open a not-yet-created sqlite store at once corrupt it."""
    localrule: True
    conda:
        "../envs/medflow.yaml"
    params:
        experiments=list(tracking.EXPERIMENTS),
    script:
        "../workflow/scripts/mlflow_store.py"
