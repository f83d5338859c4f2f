"""Collecting input problems: one line per file and problem, then a count; a single problem stays one line."""

import pickle

import pytest

from medflow.errors import InputError, InputErrors, Problems


def _bad(path, problem):
    raise InputError(path, problem)


def test_input_error_is_one_line_and_its_own_only_problem():
    err = InputError("/data/x.nii", "all voxels are zero")
    assert str(err) == "/data/x.nii: all voxels are zero"
    assert err.errors == [err]


def test_problems_raise_every_problem_together():
    with pytest.raises(InputErrors) as exc:
        with Problems() as problems:
            problems.add("/d/a.csv", "line 3: label '2' is not 0 or 1")
            assert problems.check(_bad, "/d/b.npy", "dtype float32, expected uint8") is None
            assert problems.check(lambda x: x + 1, 41) == 42, "a check that passes returns its value"
            problems.add("/d/c.npy", "missing")
    err = exc.value
    assert isinstance(err, InputError), "existing `except InputError` handlers still catch it"
    assert str(err).splitlines() == [
        "/d/a.csv: line 3: label '2' is not 0 or 1",
        "/d/b.npy: dtype float32, expected uint8",
        "/d/c.npy: missing",
        "3 problems in the input; nothing was written",
    ]
    assert [(e.path, e.problem) for e in err.errors] == [
        ("/d/a.csv", "line 3: label '2' is not 0 or 1"),
        ("/d/b.npy", "dtype float32, expected uint8"),
        ("/d/c.npy", "missing"),
    ]
    assert (err.path, err.problem) == ("/d/a.csv", "line 3: label '2' is not 0 or 1"), "the first problem's file"


def test_one_problem_is_the_plain_one_line_input_error():
    with pytest.raises(InputError) as exc:
        with Problems() as problems:
            problems.add("/d/a.csv", "missing label file")
    assert type(exc.value) is InputError and str(exc.value) == "/d/a.csv: missing label file"


def test_no_problem_raises_nothing():
    with Problems() as problems:
        problems.check(len, [1, 2])
    assert len(problems) == 0 and problems.error() is None


def test_error_raised_in_the_block_joins_those_collected_before():
    with pytest.raises(InputErrors) as exc:
        with Problems() as problems:
            problems.add("/d/a.csv", "no rows")
            raise InputError("/d/axial", "missing axial folder")
    assert [e.path for e in exc.value.errors] == ["/d/a.csv", "/d/axial"]


def test_raise_if_any_inside_the_block_does_not_repeat_a_problem():
    with pytest.raises(InputErrors) as exc:
        with Problems() as problems:
            problems.add("/d/a.csv", "no 'Grade' column")
            problems.add("/d/a.csv", "no 'BraTS_2020_subject_ID' column")
            problems.raise_if_any()
    assert len(exc.value.errors) == 2


def test_other_exceptions_pass_through():
    with pytest.raises(ZeroDivisionError):
        with Problems() as problems:
            problems.add("/d/a.csv", "no rows")
            _ = 1 / 0


def test_nested_collections_flatten_and_pickle():
    inner = InputErrors([InputError("/a", "x"), InputError("/b", "y")])
    outer = InputErrors([inner, InputError("/c", "z")])
    assert [e.path for e in outer.errors] == ["/a", "/b", "/c"]
    back = pickle.loads(pickle.dumps(outer))
    assert type(back) is InputErrors and str(back) == str(outer)
    with pytest.raises(ValueError):
        InputErrors([])
