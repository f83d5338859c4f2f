"""What every workflow script does first: log to the rule's log file and report bad input without a traceback.

Usage at the top of ``workflow/scripts/<rule>.py``::

    from medflow.jobs import start
    log = start(snakemake)
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from medflow.errors import InputError


class JobError(Exception):
    """A job that cannot run here for a reason its one-line message says in full (e.g. a claimed GPU
    that CUDA cannot use): ``start``'s handler prints ``ERROR: <message>`` without a traceback."""


def start(smk, name: str | None = None) -> logging.Logger:
    """Send stderr and logging to ``smk.log[0]`` (append, so a resumed job keeps its history).

    An :class:`InputError` ends the job with its message instead of a traceback: one ``ERROR: <file>:
    <problem>`` line per problem (every problem of an :class:`~medflow.errors.InputErrors`, then its count
    line), in the log and on the console; a :class:`JobError` likewise with its one line. Any other
    exception keeps its full traceback for debugging (in the log; its last line on the console).
    """
    log_path = smk.log[0] if len(smk.log) else None
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        stream = open(log_path, "a", buffering=1)
        sys.stderr = stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, (InputError, JobError)):
            # One "ERROR: <file>: <problem>" line per problem (InputErrors: every one, then the count).
            msg = "\n".join(f"ERROR: {line}" for line in str(exc).splitlines())
            console = msg
        else:
            msg = "".join(traceback.format_exception(exc_type, exc, tb))
            console = msg.splitlines()[-1]
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        if log_path:  # Snakemake shows the job's stderr only through the log: say it on the console too.
            sys.__stderr__.write(console + f"\n(see {log_path})\n")
            sys.__stderr__.flush()

    sys.excepthook = excepthook
    return logging.getLogger(name or getattr(smk, "rule", "medflow"))
