"""medflow.params.from_config: config mappings -> (nested) dataclasses, lists -> tuples, unknown/missing keys."""

from __future__ import (
    annotations,  # string annotations, as in the library's own modules
)

from dataclasses import dataclass, field

import pytest

from medflow.params import from_config


@dataclass(frozen=True)
class Augment:
    rotate_deg: float = 0.0
    hflip: bool = False


@dataclass(frozen=True)
class Model:
    channels: tuple[int, ...]
    kernel: tuple[int, int] = (3, 3)
    dropout: float = 0.0
    crop: tuple[int, int] | None = None
    augment: Augment = field(default_factory=Augment)
    stages: list[Augment] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def test_builds_nested_dataclasses_and_turns_lists_into_tuples():
    got = from_config(
        Model,
        {
            "channels": [8, 16],
            "kernel": [5, 5],
            "crop": [64, 32],
            "augment": {"rotate_deg": 10, "hflip": True},
            "stages": [{"hflip": True}],
            "names": ["a"],
        },
    )
    assert got == Model(
        channels=(8, 16),
        kernel=(5, 5),
        crop=(64, 32),
        augment=Augment(10, True),
        stages=[Augment(hflip=True)],
        names=["a"],
    )
    # Tuples, not lists (a list equals no tuple, so the == above checks this too): hashable config values.
    assert all(isinstance(v, tuple) for v in (got.channels, got.kernel, got.crop)) and isinstance(got.names, list)


def test_defaults_fill_what_the_mapping_leaves_out():
    assert from_config(Model, {"channels": [4]}) == Model(channels=(4,))
    assert from_config(Model, {"channels": [4], "crop": None}).crop is None


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ValueError, match=r"Model: unknown key 'chanels'"):
        from_config(Model, {"channels": [4], "chanels": [4]})
    with pytest.raises(ValueError, match=r"Model\.augment: unknown key 'flip'"):
        from_config(Model, {"channels": [4], "augment": {"flip": True}})
    with pytest.raises(ValueError, match=r"Model\.stages\[1\]: unknown key 'x'"):
        from_config(Model, {"channels": [4], "stages": [{}, {"x": 1}]})


def test_missing_key_is_named():
    with pytest.raises(ValueError, match=r"Model: missing key 'channels'"):
        from_config(Model, {"dropout": 0.1})


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"Model\.kernel: expected 2 values, got 3"):
        from_config(Model, {"channels": [4], "kernel": [3, 3, 3]})
    with pytest.raises(ValueError, match=r"Model\.augment: expected a mapping"):
        from_config(Model, {"channels": [4], "augment": [1]})
    with pytest.raises(ValueError, match="expected a mapping"):
        from_config(Model, [("channels", [4])])
    with pytest.raises(TypeError, match="not a dataclass"):
        from_config(dict, {})
