from medflow.jobs import start
from medflow.segmentation.data import by_case
from medflow.segmentation.evaluate import EvalParams, evaluate_unet3d
from medflow.train import load_checkpoint, select_device

log = start(snakemake)
evaluate_unet3d(
    snakemake.input.checkpoint,
    by_case(snakemake.input.stacks),
    snakemake.input.split,
    metrics_json=snakemake.output.metrics,
    per_case_csv=snakemake.output.per_case,
    predictions_dir=snakemake.output.predictions,
    overlays_dir=snakemake.output.overlays,
    params=EvalParams(**snakemake.params.evaluate, threshold=load_checkpoint(snakemake.input.checkpoint)["meta"]["threshold"]),
    device=select_device(snakemake.threads),
    bf16=snakemake.params.bf16,
    rule=snakemake.rule,
)
