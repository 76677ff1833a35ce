"""Shared CLI plumbing: one-line errors (rank 0 only under torchrun), size and device options."""

from __future__ import annotations

import pytest

from attnprobe.cli.common import check_device, one_line_errors, parse_roi, parse_size3
from attnprobe.errors import ConfigError
from tests.helpers import assert_message, cli_runner, command_app


@one_line_errors
def fails() -> None:
    raise ConfigError("bad thing", expected="a good thing", got="a bad one")


run = cli_runner(command_app(lambda app: app.command("fails")(fails)))


def test_an_error_is_one_line_and_exit_2(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    result = run("fails")
    assert result.exit_code == 2
    assert result.output.splitlines() == ["error: bad thing; expected a good thing; got a bad one"]


def test_under_torchrun_every_rank_prints_its_line_and_exits_2(monkeypatch):
    # Before the process group is up, torchrun's RANK says which rank this is.
    monkeypatch.setenv("RANK", "1")
    result = run("fails")
    assert result.exit_code == 2 and result.output.startswith("[rank 1] error: bad thing")
    monkeypatch.setenv("RANK", "0")
    result = run("fails")
    assert result.exit_code == 2 and result.output.startswith("error: bad thing")


def test_sizes_read_like_the_roi():
    assert parse_roi("96,96,64") == (96, 96, 64) == parse_roi("96x96x64")
    assert parse_roi("64") == (64, 64, 64)
    assert parse_roi("full") == "full" and parse_roi(None) is None
    assert parse_size3("32,64,32", option="--crop-size", expected="three sizes") == (32, 64, 32)
    for bad in ("96,96", "a,b,c", "0,32,32", "full"):
        with pytest.raises(ConfigError) as err:
            parse_size3(bad, option="--crop-size", expected="three sizes")
        assert_message(err, "cannot read --crop-size", "three sizes", repr(bad))


def test_device_option():
    assert check_device("cpu").type == "cpu"
    with pytest.raises(ConfigError) as err:
        check_device("gpu0")
    assert_message(err, "cannot read --device")

