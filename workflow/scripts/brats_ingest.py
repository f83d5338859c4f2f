from medflow.ingest import releases
from medflow.ingest.brats import write_manifest, write_split
from medflow.jobs import start

log = start(snakemake)
p = snakemake.params
release = releases.get(p.release)
write_split(p.raw, p.cases, p.fractions, p.seed, snakemake.output.split, release=release)
write_manifest(p.raw, p.cases, snakemake.output.manifest, release=release)
log.info("%d cases: %s, %s", len(p.cases), snakemake.output.split, snakemake.output.manifest)
