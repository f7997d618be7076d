"""Configuration (§G): the YAML file, ${ENV} interpolation, validation errors naming the field,
the no-config start from environment keys, and secrets that never print."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gatewatch.settings import ConfigError, Settings, load_settings

GATEWATCH = str(Path(sys.executable).with_name("gatewatch"))


def write(tmp_path: Path, text: str, name: str = "gatewatch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **env: str) -> Settings:
    return load_settings(write(tmp_path, text), env=env)


def error_of(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **env)
    return str(info.value)


def test_env_interpolation_with_defaults(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        admin_key: ${ADMIN}
        database: sqlite:///${DATA_DIR:-/var/lib/gatewatch}/gw.db
        providers:
          - name: openai
            type: openai
            api_key: ${OPENAI_KEY}
            base_url: ${OPENAI_URL:-https://api.openai.com/v1}
            timeout: ${OPENAI_TIMEOUT:-45}
          - name: local
            type: openai-compatible
            base_url: http://${LOCAL_HOST:-127.0.0.1}:${LOCAL_PORT:-8000}/v1
        """,
        ADMIN="gw-admin-from-env-0123456789",
        OPENAI_KEY="sk-pass: with # yaml chars",
        LOCAL_PORT="9000",
    )
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "gw-admin-from-env-0123456789"
    assert s.database == "sqlite:////var/lib/gatewatch/gw.db"
    openai, local = s.providers
    assert openai.api_key is not None
    assert openai.api_key.get_secret_value() == "sk-pass: with # yaml chars"  # not re-parsed
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.timeout == 45
    assert local.base_url == "http://127.0.0.1:9000/v1"  # a set variable beats its default


def test_empty_default_is_allowed(tmp_path: Path) -> None:
    s = load(tmp_path, "providers: [{name: openai, type: openai, base_url: '${U:-}'}]")
    assert s.providers[0].base_url == ""


def test_missing_env_var_names_the_field_and_the_variable(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path,
        """
        providers:
          - {name: openai, type: openai, api_key: "${OPENAI_API_KEY}"}
          - {name: anthropic, type: anthropic, api_key: "${ANTHROPIC_KEY}"}
        """,
        OPENAI_API_KEY="sk-set",
    )
    assert "providers[1].api_key" in msg
    assert "ANTHROPIC_KEY" in msg


_ONE_PROVIDER = "providers: [{name: openai, type: openai}]\n"
INVALID = {
    "unknown-top": ("colour: red\n", "colour"),
    "unknown-nested": (
        "providers: [{name: openai, type: openai, apikey: sk-x}]\n",
        "providers[0].apikey",
    ),
    "wrong-type": ("retention: {days: lots}\n", "retention.days"),
    "out-of-range": ("limits: {max_body_bytes: -1}\n", "limits.max_body_bytes"),
    "bad-enum": ("content: everything\n", "content"),
    "provider-type": (
        "providers: [{name: openai, type: openai}, {name: x, type: azure}]\n",
        "providers[1].type",
    ),
    "provider-timeout": (
        "providers: [{name: openai, type: openai, timeout: soon}]\n",
        "providers[0].timeout",
    ),
    "missing-name": ("providers: [{type: openai}]\n", "providers[0].name"),
    "price-missing-output": ("prices: {openai/ft: {input: 1}}\n", "prices.openai/ft.output"),
    "unknown-target-provider": (
        _ONE_PROVIDER + "models: {smart: [anthropic/claude-sonnet-4-5]}\n",
        "models.smart[0]",
    ),
    "second-target": (
        _ONE_PROVIDER + "models: {fast: [openai/gpt-4o-mini], smart: [openai/gpt-4o, no/gpt]}\n",
        "models.smart[1]",
    ),
    "target-without-provider": (_ONE_PROVIDER + "models: {smart: [gpt-4o]}\n", "models.smart[0]"),
}


@pytest.mark.parametrize(("text", "field"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    msg = error_of(tmp_path, text)
    assert field in msg, msg


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "providers: [{name: openai\n")
    assert "gatewatch.yaml" in msg


def test_no_config_file_uses_provider_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./gatewatch.yaml here
    s = load_settings(env={"OPENAI_API_KEY": "sk-env-openai-1234",
                           "ANTHROPIC_API_KEY": "sk-ant-env-1234",
                           "GATEWATCH_ADMIN_KEY": "gw-env-admin-key-0123456789"})  # fmt: skip
    assert [(p.name, p.type) for p in s.providers] == [
        ("openai", "openai"), ("anthropic", "anthropic")]  # fmt: skip
    assert [p.api_key.get_secret_value() for p in s.providers if p.api_key] == [
        "sk-env-openai-1234", "sk-ant-env-1234"]  # fmt: skip
    assert [p.url for p in s.providers] == ["https://api.openai.com/v1",
                                            "https://api.anthropic.com"]  # fmt: skip
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "gw-env-admin-key-0123456789"
    assert s.database.startswith("sqlite:///")

    only_anthropic = load_settings(env={"ANTHROPIC_API_KEY": "sk-ant-env-1234"})
    assert [p.name for p in only_anthropic.providers] == ["anthropic"]
    assert only_anthropic.admin_key is None
    assert load_settings(env={}).providers == []


def test_admin_key_from_environment_with_a_config_file(tmp_path: Path) -> None:
    text = "providers: [{name: openai, type: openai}]\n"
    s = load(tmp_path, text, GATEWATCH_ADMIN_KEY="gw-env-admin-key-0123456789")
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "gw-env-admin-key-0123456789"
    # the file wins when it names one
    s = load(tmp_path, "admin_key: gw-file-admin-key-0123456789\n",
             GATEWATCH_ADMIN_KEY="gw-env-admin-key-0123456789")  # fmt: skip
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "gw-file-admin-key-0123456789"


def test_config_path_from_gatewatch_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "providers: [{name: elsewhere, type: anthropic}]\n", "other.yaml")
    s = load_settings(env={"GATEWATCH_CONFIG": str(path), "OPENAI_API_KEY": "sk-ignored"})
    assert [p.name for p in s.providers] == ["elsewhere"]


def test_secrets_never_print(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        admin_key: gw-super-secret-admin-0123456789
        providers:
          - {name: openai, type: openai, api_key: sk-very-secret-openai-key}
          - {name: anthropic, type: anthropic, api_key: "${ANT}"}
        """,
        ANT="sk-ant-very-secret-key",
    )
    for text in (repr(s), str(s), repr(s.providers), s.model_dump_json()):
        for secret in ("gw-super-secret-admin-0123456789", "sk-very-secret-openai-key",
                       "sk-ant-very-secret-key"):  # fmt: skip
            assert secret not in text


def test_serve_with_bad_config_exits_nonzero_naming_the_field(tmp_path: Path) -> None:
    bad = write(tmp_path, "providers:\n  - {name: openai, type: azure}\n", "bad.yaml")
    proc = subprocess.run(
        [GATEWATCH, "serve", "--config", str(bad), "--port", "1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "providers[0].type" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "gatewatch.db").exists()  # nothing started


def test_serve_with_missing_config_file_exits_nonzero(tmp_path: Path) -> None:
    proc = subprocess.run(
        [GATEWATCH, "serve", "--config", str(tmp_path / "nope.yaml"), "--port", "1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
