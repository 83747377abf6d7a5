"""Token auth for joining a Ray cluster.

Clusters started with `ray start` use token auth by default since Ray 2.59, but `ray.init`
turns it on by itself only for a cluster it finds on its own, not for an explicit address
(`--address host:port`, $RAY_ADDRESS). Ray reads its switch, $RAY_AUTH_MODE, once: when ray
is first imported. So this module never imports ray, and `tune/run.py` calls
`use_token_auth` before anything imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_SOURCES = "~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN"


def has_token() -> bool:
    """Whether this machine holds a Ray auth token where Ray looks for one."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or token_file.is_file()


def token_auth_on() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def use_token_auth(address: str | None) -> bool:
    """Send Ray's auth token when joining the cluster at `address`, if this machine has one
    (sets $RAY_AUTH_MODE=token; a cluster without auth ignores it). An explicit
    $RAY_AUTH_MODE is left as it is. Returns whether token auth is on."""
    if address and "RAY_AUTH_MODE" not in os.environ and has_token():
        os.environ["RAY_AUTH_MODE"] = "token"
    return token_auth_on()
