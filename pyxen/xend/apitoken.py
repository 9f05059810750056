"""The API token: the secret a TCP client of xend shows (HTTP bearer
token, browser login, the TCP console export's first line)."""

from __future__ import annotations

import secrets
from pathlib import Path

from ..fileutil import atomic_write

__all__ = ["token_path", "load_token"]


def token_path(cfg, etc: Path) -> Path:
    return Path(cfg["xend-http-token-file"]) if cfg["xend-http-token-file"] else etc / "xend-http-token"


def load_token(path: Path) -> str:
    """The API token: read it, or create a random one (0600) on first start."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode(), 0o600)
    return token
