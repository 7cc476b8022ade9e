"""``keys host-*``, ``keys trust-*`` and ``proxy --check`` with identities, through the real
command entry point: a fleet's whole identity life cycle (create, exchange, rotate, retire)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from gateway import handshake as hs
from gateway.cli import main
from gateway.identity import IdentityState, load_identity, load_trust_store


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused_as(capsys: pytest.CaptureFixture[str], error: str, *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{error}: "), err
    return err


def fingerprint_of(text: str) -> str:
    found = re.search(r"sha256:[0-9a-f ]+", text)
    assert found is not None, text
    return found.group(0).strip()


def init(capsys: pytest.CaptureFixture[str], path: Path, host: str) -> str:
    code, out, err = run(capsys, "keys", "host-init", "--identity", str(path), "--host-id", host)
    assert code == 0, err
    assert path.stat().st_mode & 0o777 == 0o600
    return fingerprint_of(out)


def export(capsys: pytest.CaptureFixture[str], identity: Path, out: Path, *extra: str) -> str:
    code, stdout, err = run(
        capsys, "keys", "host-export", "--identity", str(identity), "--output", str(out), *extra
    )
    assert code == 0, err
    assert stdout == ""
    return fingerprint_of(err)


def test_identity_life_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a_fp = init(capsys, a, "host-a")
    init(capsys, b, "host-b")
    a_pub = tmp_path / "a.pub.json"
    assert export(capsys, a, a_pub) == a_fp
    assert "seeds" not in a_pub.read_text()
    b_trust = tmp_path / "b-trust.json"

    # A wrong fingerprint is refused, and nothing is written.
    other = "sha256:" + "00" * 32
    refused_as(
        capsys,
        "IdentityError",
        "keys",
        "trust-add",
        str(a_pub),
        "--fingerprint",
        other,
        "--trust-store",
        str(b_trust),
    )
    assert not b_trust.exists()
    code, out, _ = run(
        capsys,
        "keys",
        "trust-add",
        str(a_pub),
        "--fingerprint",
        a_fp,
        "--trust-store",
        str(b_trust),
    )
    assert code == 0
    assert "as active" in out
    assert b_trust.stat().st_mode & 0o777 == 0o644

    # Rotation on A: a pending generation, exported and trusted ahead of use.
    code, out, _ = run(capsys, "keys", "host-init", "--identity", str(a))
    assert code == 0
    new_fp = fingerprint_of(out)
    new_id = load_identity(a).keys[1].key_id.hex()
    assert "pending" in out
    new_pub = tmp_path / "a-new.pub.json"
    assert export(capsys, a, new_pub, "--key-id", new_id) == new_fp
    code, out, _ = run(
        capsys,
        "keys",
        "trust-add",
        str(new_pub),
        "--fingerprint",
        new_fp.upper(),
        "--trust-store",
        str(b_trust),
    )
    assert code == 0
    assert "as pending" in out
    old_id = load_identity(a).active.key_id.hex()
    code, out, _ = run(capsys, "keys", "host-rotate", "--identity", str(a))
    assert code == 0
    assert load_identity(a).active.key_id.hex() == new_id
    code, out, _ = run(capsys, "keys", "trust-retire", old_id, "--trust-store", str(b_trust))
    assert code == 0
    assert f"{new_id} is now active" in out
    store = load_trust_store(b_trust)
    assert store.active_for("host-a").key_id.hex() == new_id

    code, out, _ = run(capsys, "keys", "trust-list", "--trust-store", str(b_trust))
    assert code == 0
    assert out.splitlines()[0].startswith(f"host-a  {old_id}  retired")
    assert out.splitlines()[1].startswith(f"host-a  {new_id}  active")
    code, out, _ = run(capsys, "keys", "host-list", "--identity", str(a))
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()] == ["retired", "active"]
    # The rotated identity still completes a handshake with B's trust store.
    hello, pending = hs.hello(load_identity(b))
    trust_a = load_trust_store(b_trust)  # A only needs B in its own store; reuse the API here
    b_pub = tmp_path / "b.pub.json"
    b_fp = export(capsys, b, b_pub)
    a_trust = tmp_path / "a-trust.json"
    run(
        capsys,
        "keys",
        "trust-add",
        str(b_pub),
        "--fingerprint",
        b_fp,
        "--trust-store",
        str(a_trust),
    )
    offer, key = hs.offer(hello, b"attempt", load_identity(a), load_trust_store(a_trust), "host-b")
    _, target_key = hs.accept(offer, pending, trust_a)
    assert key.key_id == target_key.key_id


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.json"
    refused_as(capsys, "IdentityError", "keys", "host-init", "--identity", str(a))
    init(capsys, a, "host-a")
    refused_as(
        capsys, "IdentityError", "keys", "host-init", "--identity", str(a), "--host-id", "host-z"
    )
    refused_as(capsys, "IdentityError", "keys", "host-rotate", "--identity", str(a))
    refused_as(
        capsys, "IdentityError", "keys", "host-export", "--identity", str(a), "--key-id", "12"
    )
    a.chmod(0o644)
    err = refused_as(capsys, "IdentityError", "keys", "host-list", "--identity", str(a))
    assert "mode 0644" in err
    a.chmod(0o600)
    pub = tmp_path / "a.pub.json"
    fp = export(capsys, a, pub)
    doc = json.loads(pub.read_text())
    doc["host_id"] = "host-z"
    pub.write_text(json.dumps(doc))
    refused_as(
        capsys,
        "IdentityError",
        "keys",
        "trust-add",
        str(pub),
        "--fingerprint",
        fp,
        "--trust-store",
        str(tmp_path / "t.json"),
    )
    refused_as(
        capsys,
        "IdentityError",
        "keys",
        "trust-retire",
        "ab" * 16,
        "--trust-store",
        str(tmp_path / "missing.json"),
    )


CONFIG = """
host_id = "{host}"
keyring = "{dir}/keyring.json"
replay_db = "{dir}/replay.sqlite"
{identity}

[[peers]]
host_id = "host-b"
addresses = ["192.0.2.12:5901"]
suite = "{suite}"

[[routes]]
name = "vm"
listen = "127.0.0.1:5901"
upstream = "127.0.0.1:15901"
vm_id = "{vm}"
"""


def test_proxy_check_verifies_identity_and_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "keys", "generate", "--keyring", str(tmp_path / "keyring.json"))[0] == 0
    init(capsys, tmp_path / "a.json", "host-a")
    init(capsys, tmp_path / "b.json", "host-b")
    fp = export(capsys, tmp_path / "b.json", tmp_path / "b.pub.json")
    trust = tmp_path / "trust.json"
    run(
        capsys,
        "keys",
        "trust-add",
        str(tmp_path / "b.pub.json"),
        "--fingerprint",
        fp,
        "--trust-store",
        str(trust),
    )
    files = f'identity = "{tmp_path}/a.json"\ntrust_store = "{trust}"'

    def check(host: str, identity: str, suite: str) -> tuple[int, str, str]:
        config = tmp_path / "proxy.toml"
        config.write_text(
            CONFIG.format(host=host, dir=tmp_path, identity=identity, suite=suite, vm=uuid.uuid4())
        )
        return run(capsys, "proxy", "--config", str(config), "--check")

    code, out, err = check("host-a", files, "identity")
    assert (code, err) == (0, "")
    assert out.splitlines()[1].startswith("identity ok: identity ")
    assert "1 trusted peer(s)" in out
    code, _, err = check("host-c", files, "identity")
    assert code == 2
    assert "is for host host-a, not host-c" in err
    code, _, err = check("host-a", "", "identity")
    assert code == 2
    assert err.startswith("ConfigError: ")
    store = load_trust_store(trust)
    (entry,) = store.entries
    assert entry.state is IdentityState.ACTIVE
    run(capsys, "keys", "trust-retire", entry.key_id.hex(), "--trust-store", str(trust))
    code, _, err = check("host-a", files, "identity")
    assert code == 2
    assert "requires the identity suite" in err
    code, out, err = check("host-a", files, "shared-key")
    assert (code, err) == (0, "")
    assert "0 trusted peer(s)" in out


def test_proxy_with_identity_peers_does_not_start_without_its_identity_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fail closed: an identity peer is never served with the shared keyring alone; the
    identity and trust store load before any port opens."""
    assert run(capsys, "keys", "generate", "--keyring", str(tmp_path / "keyring.json"))[0] == 0
    config = tmp_path / "proxy.toml"
    files = f'identity = "{tmp_path}/a.json"\ntrust_store = "{tmp_path}/t.json"'
    config.write_text(
        CONFIG.format(
            host="host-a", dir=tmp_path, identity=files, suite="identity", vm=uuid.uuid4()
        )
    )
    err = refused_as(capsys, "IdentityError", "proxy", "--config", str(config))
    assert "a.json" in err
