"""Attack catalogue, finding 8: a TLS upstream behind a plaintext client leg is refused."""

from __future__ import annotations

import uuid

import pytest

from gateway.errors import ConfigError
from gateway.proxy.config import parse_config

BASE = f"""
host_id = "h"
keyring = "k.json"
replay_db = "r.sqlite"

[[routes]]
name = "vm"
listen = "127.0.0.1:5900"
upstream = "127.0.0.1:5910"
vm_id = "{uuid.UUID(int=1)}"
upstream_tls = true
"""


def test_tls_upstream_without_client_certificate_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.encode())
    message = str(caught.value)
    # The error says why and names the way out.
    assert "routes.0" in message
    assert "plaintext" in message
    assert "allow_plaintext_client_leg" in message


def test_named_option_allows_it_explicitly() -> None:
    config = parse_config((BASE + "allow_plaintext_client_leg = true\n").encode())
    assert config.routes[0].upstream_tls
    assert config.routes[0].allow_plaintext_client_leg


def test_tls_on_both_legs_needs_no_option() -> None:
    text = BASE + 'tls_cert = "c.pem"\ntls_key = "k.pem"\n'
    assert parse_config(text.encode()).routes[0].tls_cert == "c.pem"


def test_option_is_strictly_boolean() -> None:
    with pytest.raises(ConfigError, match="allow_plaintext_client_leg"):
        parse_config((BASE + 'allow_plaintext_client_leg = "yes"\n').encode())
