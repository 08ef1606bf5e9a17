"""Settings: flag > environment > ferry.toml > default, and one clear line when wrong."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer

from ferry.settings import (
    Settings,
    SettingsError,
    env_name,
    environment,
    load_settings,
    secret_environment,
    shown_default,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("WORKER_CONCURRENCY", "REDIS_URL", "FERRY_CONFIG", "FERRY_HOME", "WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_defaults_are_the_guides() -> None:
    settings = load_settings()
    assert (settings.worker_concurrency, settings.worker_retry_interval, settings.worker_max_attempts) == (4, 30, 10000)
    assert (settings.worker_metrics_port, settings.proxy_port, settings.lease_seconds) == (9100, 8001, 30)
    assert settings.home == Path(".ferry") and settings.redis_url is None


def test_flag_beats_environment_beats_toml_beats_default(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "ferry.toml").write_text('worker_concurrency = 5\nworker_max_attempts = 7\nferry_home = "/data"\n')
    assert load_settings().worker_concurrency == 5
    assert load_settings().home == Path("/data")
    monkeypatch.setenv("WORKER_CONCURRENCY", "6")
    assert load_settings().worker_concurrency == 6
    settings = load_settings(worker_concurrency=8, worker_id=None)
    assert (settings.worker_concurrency, settings.worker_max_attempts) == (8, 7)


def test_config_file_can_be_named(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "prod.toml").write_text('redis_url = "redis://cache:6380/2"\n')
    monkeypatch.setenv("FERRY_CONFIG", str(isolated / "prod.toml"))
    assert load_settings().redis_url == "redis://cache:6380/2"


def test_unrelated_environment_names_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.setenv("API_KEYS", "leak")
    settings = load_settings()
    assert settings.home == Path(".ferry") and settings.api_keys.get_secret_value() == ""


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WORKER_CONCURRENCY", "0", "invalid setting WORKER_CONCURRENCY: Input should be greater than or equal to 1 (got '0')"),
        ("REDIS_URL", "localhost:6379", "invalid setting REDIS_URL: must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// (got 'localhost:6379')"),
        ("MAIN_SERVER_URL", "ftp://x", "invalid setting MAIN_SERVER_URL: must start with http:// or https:// (got 'ftp://x')"),
        ("MAIN_SERVER_CA_FILE", "/no/such/ca.pem", "invalid setting MAIN_SERVER_CA_FILE: no such file: /no/such/ca.pem (got '/no/such/ca.pem')"),
        ("FERRY_SIGNING_SECRET", "hunter2", "invalid setting FERRY_SIGNING_SECRET: must be whsec_ followed by base64"),
        ("REDIS_URL", "http://:pw@cache:6379/0", "invalid setting REDIS_URL: must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// (got 'http://:***@cache:6379/0')"),
        ("FERRY_DURABILITY", "maybe", "invalid setting FERRY_DURABILITY: Input should be 'normal' or 'strict' (got 'maybe')"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == message


def test_client_certificate_needs_its_key(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "client.pem").write_text("x")
    monkeypatch.setenv("MAIN_SERVER_CERT_FILE", str(isolated / "client.pem"))
    with pytest.raises(SettingsError, match="MAIN_SERVER_CERT_FILE and MAIN_SERVER_KEY_FILE go together"):
        load_settings()


def _helps(command: Any) -> list[str]:
    """Every option help of a (click) command and its subcommands."""
    found = [getattr(param, "help", None) or "" for param in command.params]
    for sub in getattr(command, "commands", {}).values():
        found += _helps(sub)
    return found


def test_every_flag_help_names_its_variable_and_the_models_default() -> None:
    """A `[env NAME, default]` in --help is made from the settings model, so it cannot drift."""
    from ferry.cli import app

    by_variable = {env_name(name): shown_default(name) for name in Settings.model_fields}
    mentions = [
        match.groups()
        for help_text in _helps(typer.main.get_command(app))
        for match in re.finditer(r"\[env (\w+)(?:, ([^\]]+))?\]", help_text)
    ]
    assert len(mentions) >= 15  # worker, proxy, workers start, up and sink all say where a value comes from
    for variable, default in mentions:
        assert variable in by_variable, f"--help names {variable}, which is no setting"
        assert (default or "") == by_variable[variable], f"--help says {variable} defaults to {default!r}"


def test_child_processes_load_the_settings_their_parent_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = load_settings(
        worker_concurrency=9, durability="strict", health_metrics_need_key=True, api_keys="k1,k2",
        signing_secret="whsec_aGVsbG8=", main_server_url="https://main.example/in?token=t0ken",
    )
    for variable, value in environment(parent).items():
        monkeypatch.setenv(variable, value)
    read_fd, write_fd = os.pipe()  # the secrets as a supervisor sends them (see tests/test_secrets.py)
    os.write(write_fd, json.dumps(secret_environment(parent, "redis://127.0.0.1:1")).encode())
    os.close(write_fd)
    monkeypatch.setattr("ferry.settings._inherited", None)
    monkeypatch.setenv("FERRY_SETTINGS_FD", str(read_fd))
    child = load_settings()
    assert "FERRY_SETTINGS_FD" not in os.environ
    assert child.model_dump(exclude={"worker_id", "redis_url"}) == parent.model_dump(exclude={"worker_id", "redis_url"})
    assert child.redis_url == "redis://127.0.0.1:1"
