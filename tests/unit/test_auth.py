"""When the driver turns Ray's token auth on for joining a cluster (tune.auth)."""

from __future__ import annotations

import pytest

from tune import auth

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home without ~/.ray/auth_token and an environment without Ray's auth variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_no_token_no_auth(home):
    assert auth.use_token_auth("10.0.0.1:6379") is False


@pytest.mark.parametrize("where", ["home", "path", "env"])
def test_a_token_turns_auth_on_when_joining_a_cluster(home, monkeypatch, where):
    if where == "home":
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text("t" * 64)
    elif where == "path":
        (home / "token").write_text("t" * 64)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "token"))
    else:
        monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    assert auth.use_token_auth(None) is False  # a local Ray started here needs no token
    assert auth.use_token_auth("auto") is True


def test_an_explicit_mode_is_left_alone(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth.use_token_auth("10.0.0.1:6379") is False
