# The MLflow tracking store, created once before any training or evaluation job starts.


# Runs in the Snakemake process itself, never on a cluster node.
localrules:
    mlflow_store,


rule mlflow_store:
    """Create the tracking store and every experiment once, before any job runs: parallel jobs
    that open a not-yet-created sqlite store at once corrupt it."""
    output:
        MLFLOW_STORE,
    log:
        f"{LOGS}/mlflow_store.log",
    conda:
        "../envs/medflow.yaml"
    params:
        experiments=list(tracking.EXPERIMENTS),
    script:
        "../workflow/scripts/mlflow_store.py"
