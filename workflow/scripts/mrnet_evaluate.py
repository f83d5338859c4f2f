from medflow import io
from medflow.jobs import start
from medflow.mrnet.evaluate import Outputs, evaluate_task

log = start(snakemake)
p = snakemake.params
# Inputs come plane by plane, fold by fold, in the order of params.planes x params.folds.
keys = [(plane, fold) for plane in p.planes for fold in p.folds]
predictions = {plane: {} for plane in p.planes}
run_ids = {plane: {} for plane in p.planes}
for (plane, fold), pred, summary in zip(keys, snakemake.input.predictions, snakemake.input.summaries, strict=True):
    predictions[plane][fold] = pred
    run_ids[plane][fold] = io.read_json(summary)["mlflow_run_id"]
out = snakemake.output
evaluate_task(
    snakemake.wildcards.task,
    predictions,
    snakemake.input.folds,
    Outputs(out.metrics, out.predictions, out.roc, out.stacker),
    fit_on=p.evaluate["fit_on"],
    C=p.evaluate["C"],
    class_weight=p.evaluate["class_weight"],
    seed=p.seed,
    run_ids=run_ids,
)
