"""`devtoken.py`, the one development-token entry point, finds the key file, issuer and audience
exactly where the server does, without importing `config`: the same defaults, the same variables,
the same `.env` file, the same precedence. Each case is read both ways and compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import devtoken
from config import Settings

VARIABLES = ["DEV_KEY_FILE", "AUTH_SERVER_URL", "JWT_ISSUER", "JWT_AUDIENCE"]
ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_devtokens_defaults_and_env_file_are_the_servers() -> None:
    assert devtoken.DEFAULT_DEV_KEY_FILE == Settings.model_fields["dev_key_file"].default
    assert devtoken.DEFAULT_AUTH_SERVER_URL == Settings.model_fields["auth_server_url"].default
    assert devtoken.ENV_FILE == Settings.model_config["env_file"]


@pytest.mark.parametrize(
    ("environment", "env_file"),
    [
        pytest.param({}, None, id="nothing set"),
        pytest.param(
            {"AUTH_SERVER_URL": "http://auth.test:3001/"}, None, id="issuer and audience from the auth server"
        ),
        pytest.param(
            {"AUTH_SERVER_URL": "http://auth.test", "JWT_ISSUER": "https://issuer.test", "JWT_AUDIENCE": "taskflow"},
            None,
            id="issuer and audience of their own",
        ),
        pytest.param(
            {}, "DEV_KEY_FILE=keys/dev.pem\nAUTH_SERVER_URL=http://from-file.test:1\n", id="everything from .env"
        ),
        pytest.param(
            {"AUTH_SERVER_URL": "http://from-env.test"},
            "AUTH_SERVER_URL=http://from-file.test\nJWT_AUDIENCE=file-audience\n",
            id="the environment wins over .env",
        ),
        pytest.param(
            {"DEV_KEY_FILE": "", "JWT_ISSUER": ""},
            "DEV_KEY_FILE=from-file.pem\nJWT_ISSUER=file-issuer\n",
            id="an empty variable is unset",
        ),
        pytest.param({}, "JWT_ISSUER=\nJWT_AUDIENCE=\nDEV_KEY_FILE=\n", id="empty values in .env are unset"),
        pytest.param({"jwt_audience": "lower-case", "dev_key_file": "lower.pem"}, None, id="names in lower case"),
        pytest.param(
            {},
            "# a comment\nexport DEV_KEY_FILE='my key.pem'\nJWT_ISSUER=\"quoted issuer\"  # why\nAUTH_SERVER_URL = http://spaced.test \n",
            id="quotes, export, comments and spaces in .env",
        ),
        pytest.param({}, ENV_EXAMPLE.read_text(encoding="utf-8"), id=".env.example as .env"),
    ],
)
def test_devtoken_reads_the_key_file_issuer_and_audience_as_the_server_does(
    environment: dict[str, str], env_file: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file, encoding="utf-8")

    server = Settings()
    found = devtoken.load_dev_settings()

    assert (found.key_file, found.issuer, found.audience) == (
        server.dev_key_file,
        server.jwt_issuer,
        server.jwt_audience,
    )


def test_devtoken_refuses_a_lifetime_under_one_second(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEV_KEY_FILE", str(tmp_path / "dev-key.pem"))

    with pytest.raises(SystemExit) as exited:
        devtoken.main(["alice", "--ttl", "0"])

    assert exited.value.code == 2
    assert "--ttl" in capsys.readouterr().err
    assert not (tmp_path / "dev-key.pem").exists()
