"""jobs.start's handler: bad input ends a job with every problem, one line each, in the log and on the
console, and no traceback; any other error keeps its traceback in the log."""

import io
import logging
import sys
from types import SimpleNamespace

import pytest

from medflow import jobs
from medflow.errors import InputError, InputErrors


@pytest.fixture
def job(tmp_path, monkeypatch):
    """Starts a job whose console is captured; returns (log path, console, excepthook). (Started in the
    test itself: pytest resets sys.stderr between a fixture's setup and the test.)"""
    console = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", console)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    log_path = tmp_path / "logs" / "mrnet_ingest.log"
    streams = []

    def begin():
        monkeypatch.setattr(sys, "stderr", sys.stderr)  # undone after the test (start replaces it)
        jobs.start(SimpleNamespace(log=[str(log_path)], rule="mrnet_ingest"))
        streams.append(sys.stderr)
        return log_path, console, sys.excepthook

    yield begin
    for s in streams:
        s.close()
    root.handlers[:], root.level = handlers, level


def _raise(exc):
    try:
        raise exc
    except Exception as e:
        return type(e), e, e.__traceback__


def test_every_problem_goes_to_log_and_console_without_traceback(job):
    log_path, console, hook = job()
    err = InputErrors(
        [
            InputError("/raw/train/axial/0002.npy", "dtype float32, expected uint8"),
            InputError("/raw/train/coronal/0003.npy", "missing"),
            InputError("/raw/valid-acl.csv", "line 4: label '2' is not 0 or 1"),
        ]
    )
    hook(*_raise(err))
    expected = [
        "ERROR: /raw/train/axial/0002.npy: dtype float32, expected uint8",
        "ERROR: /raw/train/coronal/0003.npy: missing",
        "ERROR: /raw/valid-acl.csv: line 4: label '2' is not 0 or 1",
        "ERROR: 3 problems in the input; nothing was written",
    ]
    text = log_path.read_text()
    assert text.splitlines() == expected and "Traceback" not in text
    assert console.getvalue().splitlines() == expected + [f"(see {log_path})"]


def test_single_input_error_is_one_line(job):
    log_path, console, hook = job()
    hook(*_raise(InputError("/raw/BraTS20_Training_001_t1.nii", "truncated or unreadable image data")))
    line = "ERROR: /raw/BraTS20_Training_001_t1.nii: truncated or unreadable image data"
    assert log_path.read_text().splitlines() == [line]
    assert console.getvalue().splitlines() == [line, f"(see {log_path})"]


def test_other_errors_keep_their_traceback_in_the_log(job):
    log_path, console, hook = job()
    hook(*_raise(ZeroDivisionError("division by zero")))
    assert "Traceback" in log_path.read_text()
    assert console.getvalue().splitlines() == ["ZeroDivisionError: division by zero", f"(see {log_path})"]


def test_a_job_error_is_one_line_without_traceback(job):
    """E.g. a rule that claims a GPU CUDA cannot use (medflow.train.device.DeviceError is a JobError)."""
    from medflow.jobs import JobError

    log_path, console, hook = job()
    hook(*_raise(JobError("the rule claims a GPU but /dev/nvidia0 exists yet CUDA is unusable: driver too old")))
    line = "ERROR: the rule claims a GPU but /dev/nvidia0 exists yet CUDA is unusable: driver too old"
    assert log_path.read_text().splitlines() == [line]
    assert console.getvalue().splitlines() == [line, f"(see {log_path})"]
