"""All five BraTS preprocessing stages of one case in one job (config ``brats.jobs: per_case``), for
downloads of a thousand cases and more, where five jobs per case make Snakemake's planning slow.

It calls each stage's own function, the one its per-stage rule's script calls (``write_validation``,
``correct_case``, ``write_trim``, ``stack_from_records``, ``sample_case``), so both modes write the same
files, bar the intermediate N4 volumes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medflow.ingest.brats import write_validation
from medflow.ingest.releases import MODALITIES, Release
from medflow.params import from_config
from medflow.preprocess.n4 import N4Params, correct_case
from medflow.preprocess.patches import PatchParams, sample_case
from medflow.preprocess.stack import stack_from_records
from medflow.preprocess.trim import write_trim


def prepare_case(
    raw_dir: str | os.PathLike,
    case: str,
    release: Release,
    raw: Mapping[str, str],
    outputs: Mapping[str, Any],
    params: Mapping[str, Any],
    threads: int = 1,
) -> None:
    """``raw``: {kind: raw file} (``flair`` ... ``seg``); ``outputs``: ``valid``, ``trim``, ``stack``,
    ``patches``; ``params``: ``n4``, ``margin``, ``stack``, ``patches``, ``seed`` as the per-stage rules pass them.

    The N4-corrected volumes only pass from N4 to trimming and stacking here: they are written to a
    temporary folder beside the stack and removed (the stack holds the corrected voxels; a 1,251-case
    release would keep tens of GB of them otherwise).
    """
    write_validation(raw_dir, case, outputs["valid"], release=release)
    Path(outputs["stack"]).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(outputs["stack"]).parent, prefix=f".{case}.n4.") as tmp:
        corrected = [os.path.join(tmp, f"{case}_{m}.nii") for m in MODALITIES]
        n4 = from_config(N4Params, params["n4"])
        correct_case(dict(zip(MODALITIES, (raw[m] for m in MODALITIES))), dict(zip(MODALITIES, corrected)), n4, threads)
        write_trim(case, corrected, raw["seg"], params["margin"], outputs["trim"])
        stack_from_records(
            case, corrected, raw["seg"], outputs["valid"], outputs["trim"], outputs["stack"], params["stack"], release
        )
    sample_case(outputs["stack"], outputs["patches"], from_config(PatchParams, params["patches"]), params["seed"])
