"""The exception hierarchy: bad values are ValueErrors too, file/state errors are not."""

import pickle

import pytest

from attnprobe.data.preprocess import validate_roi
from attnprobe.errors import (
    AttnprobeError,
    CheckpointError,
    ConfigError,
    DataError,
    ShapeError,
    StoreError,
    TapError,
)


@pytest.mark.parametrize("cls", [ConfigError, ShapeError, DataError])
def test_bad_value_errors_are_value_errors(cls):
    assert issubclass(cls, ValueError)
    assert issubclass(cls, AttnprobeError)
    with pytest.raises(ValueError, match="expected a; got b; fix: c"):
        raise cls("bad", expected="a", got="b", fix="c")


@pytest.mark.parametrize("cls", [CheckpointError, StoreError, TapError])
def test_file_and_state_errors_are_not_value_errors(cls):
    assert issubclass(cls, AttnprobeError)
    assert not issubclass(cls, ValueError)


def test_except_value_error_catches_a_library_config_error():
    # the way a PyTorch/MONAI user writes it
    try:
        validate_roi((96, 96, 50))
    except ValueError as err:
        caught = err
    assert isinstance(caught, ConfigError)
    assert "axis z" in str(caught)


@pytest.mark.parametrize("cls", [ConfigError, ShapeError, DataError, StoreError])
def test_errors_survive_pickling(cls):
    # workers of a DataLoader or torchrun send exceptions between processes
    err = pickle.loads(pickle.dumps(cls("bad", expected="a", got="b")))
    assert type(err) is cls
    assert str(err) == "bad; expected a; got b"
