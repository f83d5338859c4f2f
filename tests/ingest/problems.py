"""What the ingest tests assert about a failed ingest: every problem reported, one line each."""


def assert_reported(err, expected):
    """``err`` reports exactly ``expected`` [(path, words in its problem)], one line each, then the count."""
    lines = str(err).splitlines()
    assert lines[-1] == f"{len(expected)} problems in the input; nothing was written"
    assert len(lines) == len(expected) + 1, lines
    for (path, words), e, line in zip(expected, err.errors, lines):
        assert e.path == str(path) and words in e.problem and line == f"{path}: {e.problem}", line
