"""The effective configuration: defaults < TOML < environment, secrets masked."""

from pathlib import Path

import pytest

from cli import main as cli
from setpay import config


def test_defaults_work_on_a_developer_machine() -> None:
    """Without a file or environment, the defaults point at localhost and ./var."""
    settings = config.load(env={})
    assert settings.amqp_url.startswith("amqp://") and "127.0.0.1" in settings.amqp_url
    assert settings.data_dir == Path("var")
    assert settings.suite == "rsa2048"


def test_toml_then_env_override(tmp_path: Path) -> None:
    """Environment beats the TOML file; tables prefix their keys."""
    toml = tmp_path / "c.toml"
    toml.write_text('suite = "p256"\n[keystore]\npin = "9999"\nworkers = 3\n')
    env = {"SETPAY_CONFIG": str(toml), "SETPAY_KEYSTORE_WORKERS": "4"}
    settings = config.load(env=env)
    assert settings.suite == "p256"
    assert settings.keystore_pin == "9999"
    assert settings.keystore_workers == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [("nonsense = 1\n", "unknown setting"), ("keystore_workers = 'x'\n", "cannot read int")],
)
def test_bad_file_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    """Unknown keys and wrong types name the setting instead of crashing later."""
    toml = tmp_path / "c.toml"
    toml.write_text(content)
    with pytest.raises(config.ConfigError, match=message):
        config.load(env={"SETPAY_CONFIG": str(toml)})


def test_describe_masks_secrets() -> None:
    """PINs and URL passwords never appear in `setpay config` output."""
    settings = config.load(
        env={"SETPAY_KEYSTORE_PIN": "424242", "SETPAY_AMQP_URL": "amqp://u:hunter2@h:5672/v"}
    )
    described = settings.describe()
    text = " ".join(described.values())
    assert "424242" not in text and "hunter2" not in text
    assert described["amqp_url"] == "amqp://u:***@h:5672/v"


def test_cli_config_prints_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """`setpay config --json` lists every field of Settings."""
    assert cli.main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    for name in config.Settings.__dataclass_fields__:
        assert f'"{name}"' in out


def test_secrets_and_the_amqp_url_may_come_from_files(tmp_path: Path) -> None:
    """``SETPAY_<NAME>_FILE`` (systemd LoadCredential) gives a secret or the AMQP URL; the
    variable itself wins; other settings are not read from files; a missing file is an error."""
    url_file, pin_file = tmp_path / "url", tmp_path / "pin"
    url_file.write_text("amqp://gateway.pg1:s3cret@h:5672/setpay\n")
    pin_file.write_text("from-file")
    env = {"SETPAY_AMQP_URL_FILE": str(url_file), "SETPAY_KEYSTORE_PIN_FILE": str(pin_file),
           "SETPAY_SUITE_FILE": str(pin_file)}  # fmt: skip
    settings = config.load(env=env)
    assert settings.amqp_url == "amqp://gateway.pg1:s3cret@h:5672/setpay"
    assert settings.keystore_pin == "from-file" and settings.suite == "rsa2048"
    assert config.load(env={**env, "SETPAY_KEYSTORE_PIN": "direct"}).keystore_pin == "direct"
    with pytest.raises(config.ConfigError, match="SETPAY_AMQP_URL_FILE"):
        config.load(env={"SETPAY_AMQP_URL_FILE": str(tmp_path / "absent")})


def test_a_child_environment_carries_every_setting_but_the_secrets(tmp_path: Path) -> None:
    """What the supervisor gives a child reproduces the settings without a config file (which
    may hold secrets) and without any secret; an empty SETPAY_CONFIG reads no file."""
    toml = tmp_path / "c.toml"
    toml.write_text('suite = "p256"\nbroker_admin_password = "adm1n"\nca_verify_cards = false\n'
                    '[keystore]\npin = "9999"\n')  # fmt: skip
    settings = config.load(env={"SETPAY_CONFIG": str(toml)})
    child = config.child_environment(settings)
    assert child["SETPAY_CONFIG"] == ""
    assert not any(v in ("adm1n", "9999") for v in child.values())
    assert not {"SETPAY_KEYSTORE_PIN", "SETPAY_AMQP_URL"} & set(child)
    again = config.load(env=child)
    assert again.suite == "p256" and again.ca_verify_cards is False
    assert again.broker_admin_password != "adm1n" and again.keystore_pin == ""


def test_allowed_values_are_checked_when_loading() -> None:
    from protocol.keys import SUITES
    from setpay import config

    assert set(config.SUITE_NAMES) == set(SUITES)  # the ground's copy of the suites
    for variable, value, named in (("SETPAY_SUITE", "rsa1024", "suite"),
                                   ("SETPAY_LOG_LEVEL", "loud", "log_level"),
                                   ("SETPAY_LOG_FORMAT", "xml", "log_format")):  # fmt: skip
        with pytest.raises(config.ConfigError, match=named) as refused:
            config.load({variable: value})
        assert "one of" in str(refused.value)


def test_a_misspelt_setting_is_refused_with_the_name_it_resembles() -> None:
    from setpay import config

    with pytest.raises(config.ConfigError, match="did you mean SETPAY_SUITE"):
        config.load({"SETPAY_SUTE": "p256"})
    with pytest.raises(config.ConfigError, match="did you mean SETPAY_BROKER_VHOST"):
        config.load({"SETPAY_BROKER_VHOTS": "x"})
    # the thin clients' secrets and tool variables are not settings, and not typos either
    config.load({"SETPAY_WALLET_PIN": "1234", "SETPAY_WALLET_PAN": "4111111111111111",
                 "SETPAY_POS_PASSPHRASE": "x", "SETPAY_KEYSTORE_PIN_FILE": "/dev/null"})


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a byte (`| head` done)
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "config"], cwd=root, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "SETPAY_CONFIG": ""})  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 141
    assert done.stderr == ""
