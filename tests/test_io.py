import json

import numpy as np
import pytest

from medflow import io
from medflow.errors import InputError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "sub" / "case.h5"
    with pytest.raises(RuntimeError):
        with io.atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_atomic_path_keeps_old_file_until_success(tmp_path):
    out = tmp_path / "m.json"
    out.write_text("old")
    with io.atomic_path(out) as tmp:
        assert out.read_text() == "old" and tmp.suffix == ".json"
        tmp.write_text("new")
    assert out.read_text() == "new"


def test_write_json_plain_floats(tmp_path):
    io.write_json(tmp_path / "m.json", {"dice": np.float32(0.5), "per_case": np.array([1, 2])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"dice": 0.5, "per_case": [1, 2]}


def test_input_error_names_file_and_problem():
    err = InputError("/data/x.nii", "shape (1, 2) differs from flair (2, 2)")
    assert str(err) == "/data/x.nii: shape (1, 2) differs from flair (2, 2)"


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    with io.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
