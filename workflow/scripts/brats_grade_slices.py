from medflow.grade.slices import stack_paths, write_slices
from medflow.jobs import start

log = start(snakemake)
cfg = snakemake.params.slices
write_slices(
    stack_paths(snakemake.input.stacks),
    snakemake.input.split,
    snakemake.output[0],
    select=cfg["select"],
    top_k=cfg["top_k"],
    min_tumour_pixels=cfg["min_tumour_pixels"],
    size=cfg["size"],
)
