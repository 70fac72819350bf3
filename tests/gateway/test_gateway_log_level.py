"""``python -m gateway run --log-level``: the gateway's own lines at the level asked for."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.__main__ import ConfigError, _parser, configure_logging, settings_from


@pytest.fixture
def base(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"t": {"issuer": "i", "subject": "s"}}))
    return ["run", "--control-plane", "http://cp", "--tenant", "acme", "--server-name", "hr",
            "--token-file", str(token), "--upstream", "http://up/mcp", "--identities", str(ids)]


def _settings(base, *argv):
    return settings_from(_parser().parse_args([*base, *argv]))


def test_the_level_defaults_to_info_and_takes_any_case(base):
    assert _settings(base).log_level == "INFO"
    assert _settings(base, "--log-level", "debug").log_level == "DEBUG"
    assert _settings(base, "--log-level", "WARNING").log_level == "WARNING"


def test_a_bad_level_is_refused_naming_the_option(base, tmp_path):
    with pytest.raises(ConfigError, match=r"^--log-level: one of DEBUG, INFO, WARNING, ERROR"):
        _settings(base, "--log-level", "chatty")
    config = tmp_path / "gateway.toml"
    config.write_text('log-level = "loud"\n')
    with pytest.raises(ConfigError, match=r"^--log-level:"):
        _settings(base, "--config", str(config))
    config.write_text('log_level = "error"\n')
    assert _settings(base, "--config", str(config)).log_level == "ERROR"


def test_the_level_decides_which_lines_are_written(base, capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(_settings(base, "--log-level", "warning"))
        logging.getLogger("gateway.client").info("bundle revision 3 activated")
        logging.getLogger("gateway.client").warning("bundle refused")
        err = capsys.readouterr().err
        assert "bundle refused" in err and "activated" not in err
        configure_logging(_settings(base, "--log-level", "debug"))
        logging.getLogger("gateway.policy").debug("decided")
        assert "DEBUG gateway.policy decided" in capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
