"""The one error type for bad input: it names the file and what is wrong with it."""

from __future__ import annotations

import os


class InputError(Exception):
    """A raw or intermediate input that is missing or malformed.

    Its message is one line, ``<file>: <problem>``, which is what a job prints and logs, so a user
    of a thousand-case run can see at once which file to fix.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Picklable with its two arguments, so it crosses process pools and DataLoader workers intact.
        return (type(self), (self.path, self.problem))
