"""The error types for bad input: each problem names the file and what is wrong with it.

A stage that checks many files collects every problem before failing, so a user fixes a download in one
pass instead of one rerun per bad file::

    with Problems() as problems:
        for path in paths:
            problems.check(check_file, path)       # an InputError is recorded, not raised
        if something_wrong:
            problems.add(csv, "line 3: label '2' is not 0 or 1")
    # leaving the block raises: the InputError itself for one problem, InputErrors for several
    write_outputs()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class InputError(Exception):
    """A raw or intermediate input that is missing or malformed.

    Its message is one line, ``<file>: <problem>``, which is what a job prints and logs, so a user
    of a thousand-case run can see at once which file to fix.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    @property
    def errors(self) -> list[InputError]:
        """The single problems this error stands for: itself (several in :class:`InputErrors`)."""
        return [self]

    def __reduce__(self):
        # Picklable with its two arguments, so it crosses process pools and DataLoader workers intact.
        return (type(self), (self.path, self.problem))


class InputErrors(InputError):
    """Several input problems found in one run, raised together.

    ``str()`` is one ``<file>: <problem>`` line per problem, then a count line. ``errors`` lists the
    single :class:`InputError` s (nested ``InputErrors`` are flattened); ``path`` and ``problem`` are the
    first one's, so code that handles one ``InputError`` still gets a file to point at.
    """

    def __init__(self, errors: Iterable[InputError]):
        self._errors = [single for e in errors for single in e.errors]
        if not self._errors:
            raise ValueError("InputErrors needs at least one InputError")
        first = self._errors[0]
        self.path, self.problem = first.path, first.problem
        n = len(self._errors)
        lines = [str(e) for e in self._errors]
        lines.append(f"{n} problem{'s' if n != 1 else ''} in the input; nothing was written")
        Exception.__init__(self, "\n".join(lines))

    @property
    def errors(self) -> list[InputError]:
        return list(self._errors)

    def __reduce__(self):
        return (type(self), (self._errors,))


class Problems:
    """Collects input problems and raises them together.

    Used as a context manager, leaving the block raises what was collected (nothing if nothing was); an
    ``InputError`` raised inside the block (a problem that stops the checks, e.g. a missing folder) is
    raised together with those collected before it. Other exceptions pass through untouched.
    """

    def __init__(self) -> None:
        self._errors: list[InputError] = []

    def add(self, path: str | os.PathLike, problem: str) -> None:
        """Record ``<path>: <problem>``."""
        self._errors.append(InputError(path, problem))

    def extend(self, error: InputError) -> None:
        """Record an already raised ``InputError`` (every problem of an ``InputErrors``); a problem
        already recorded (``raise_if_any`` inside the block) is not recorded twice."""
        known = {id(e) for e in self._errors}
        self._errors.extend(e for e in error.errors if id(e) not in known)

    def check(self, fn: Callable[..., T], *args, **kwargs) -> T | None:
        """``fn(*args, **kwargs)``, or ``None`` with its ``InputError`` recorded when it raises one."""
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            self.extend(exc)
            return None

    def __len__(self) -> int:
        return len(self._errors)

    def __iter__(self) -> Iterator[InputError]:
        return iter(list(self._errors))

    def error(self) -> InputError | None:
        """What to raise: ``None`` if nothing was collected, the one ``InputError``, or ``InputErrors``."""
        if not self._errors:
            return None
        return self._errors[0] if len(self._errors) == 1 else InputErrors(self._errors)

    def raise_if_any(self) -> None:
        err = self.error()
        if err is not None:
            raise err

    def __enter__(self) -> Problems:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.raise_if_any()
        elif issubclass(exc_type, InputError) and self._errors:
            self.extend(exc)
            raise self.error() from None
        return False
