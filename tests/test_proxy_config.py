"""The proxy's TOML config: a good file parses to exactly what it says; every bad one is a
ConfigError whose message names the field."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.proxy.config import MAX_CONFIG_BYTES, load_config, parse_address, parse_config

VM = "4b0c4bd4-53ac-4a5c-a51c-7b7d6f0fd2a1"

GOOD = f"""
host_id = "source-host.example"
keyring = "/etc/smg/keyring.json"
replay_db = "/var/lib/smg/replay.sqlite"
control_socket = "/run/smg/control.sock"

[limits]
max_connections = 64
max_message_size = 1048576
max_buffered_bytes = 131072
link_timeout = 2.5
shutdown_grace = 0
blob_ttl = 60
clock_skew = 2

[[peers]]
host_id = "target-host.example"
addresses = ["192.0.2.10:5900", "[2001:db8::10]:5901"]

[[routes]]
name = "vm-1"
listen = "0.0.0.0:5900"
upstream = "127.0.0.1:5910"
vm_id = "{VM}"
tls_cert = "/etc/smg/cert.pem"
tls_key = "/etc/smg/key.pem"

[[routes]]
name = "vm-2"
listen = "[::]:5901"
upstream = "127.0.0.1:5911"
vm_id = "{uuid.UUID(int=2)}"
upstream_tls = true
upstream_ca = "/etc/smg/ca.pem"
upstream_server_name = "spice.internal"
allow_plaintext_client_leg = true
"""

MINIMAL = f"""
host_id = "h"
keyring = "k.json"
replay_db = "r.sqlite"

[[routes]]
name = "vm"
listen = "127.0.0.1:5900"
upstream = "127.0.0.1:5901"
vm_id = "{VM}"
"""


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text.encode(), "proxy.toml")
    message = str(caught.value)
    assert message.startswith("proxy.toml: ")
    return message


def test_good_file_parses_to_what_it_says(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.host_id == "source-host.example"
    assert config.control_socket == "/run/smg/control.sock"
    assert config.limits.max_connections == 64
    assert config.limits.link_timeout == 2.5
    assert config.limits.shutdown_grace == 0
    assert [r.name for r in config.routes] == ["vm-1", "vm-2"]
    first, second = config.routes
    assert first.vm_id == uuid.UUID(VM)
    assert (first.tls_cert, first.tls_key) == ("/etc/smg/cert.pem", "/etc/smg/key.pem")
    assert second.upstream_tls
    assert second.upstream_ca == "/etc/smg/ca.pem"
    assert config.trusted_sources == frozenset({"target-host.example"})
    assert config.peer_for_address("192.0.2.10", 5900) == "target-host.example"
    assert config.peer_for_address("2001:db8::10", 5901) == "target-host.example"
    assert config.peer_for_address("192.0.2.10", 5901) is None
    assert config.peer_for_address("192.0.2.11", 5900) is None


def test_minimal_file_takes_the_defaults() -> None:
    config = parse_config(MINIMAL.encode())
    assert config.control_socket is None
    assert config.peers == ()
    assert config.limits.max_connections == 1024
    assert config.limits.link_timeout == 10.0
    assert config.routes[0].tls_cert is None
    assert not config.routes[0].upstream_tls


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:5900", ("127.0.0.1", 5900)),
        ("spice.example:1", ("spice.example", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[0:0::1]:5900", ("::1", 5900)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address", ["127.0.0.1", ":5900", "host:", "host:0", "host:65536", "host:-1", "[zz]:1"]
)
def test_parse_address_refuses(address: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the config layer turns it into ConfigError
        parse_address(address)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('host_id = "h"', 'host_id = ""', "host_id"),
        ('host_id = "h"', 'host_id = "two words"', "host_id"),
        ('host_id = "h"', f'host_id = "{"h" * 129}"', "host_id"),
        ('host_id = "h"', "host_id = 7", "host_id"),
        ('host_id = "h"\n', "", "host_id: Field required"),
        ('keyring = "k.json"\n', "", "keyring: Field required"),
        ('replay_db = "r.sqlite"\n', "", "replay_db: Field required"),
        ('name = "vm"', 'name = ""', "routes.0.name"),
        ('listen = "127.0.0.1:5900"', 'listen = "127.0.0.1"', "routes.0.listen"),
        ('listen = "127.0.0.1:5900"', 'listen = "127.0.0.1:0"', "routes.0.listen"),
        ('upstream = "127.0.0.1:5901"', 'upstream = "127.0.0.1:99999"', "routes.0.upstream"),
        ('upstream = "127.0.0.1:5901"\n', "", "routes.0.upstream: Field required"),
        (f'vm_id = "{VM}"', 'vm_id = "not-a-uuid"', "routes.0.vm_id"),
        (f'vm_id = "{VM}"', "vm_id = 12", "routes.0.vm_id"),
        ('upstream = "127.0.0.1:5901"', 'upstream = "127.0.0.1:5901"\nupstream_tls = "yes"',
         "routes.0.upstream_tls"),
    ],
)
def test_each_bad_field_is_named(old: str, new: str, where: str) -> None:
    assert old in MINIMAL
    assert where in refused(MINIMAL.replace(old, new, 1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", "0"),
        ("max_connections", "65537"),
        ("max_connections", "1.5"),
        ("max_connections", "true"),
        ("max_connections", '"10"'),
        ("max_message_size", "4095"),
        ("max_buffered_bytes", "1"),
        ("link_timeout", "0"),
        ("link_timeout", "601"),
        ("shutdown_grace", "-1"),
        ("blob_ttl", "0"),
        ("blob_ttl", "3601"),
        ("clock_skew", "301"),
    ],
)
def test_each_bad_limit_is_named(field: str, value: str) -> None:
    message = refused(MINIMAL + f"\n[limits]\n{field} = {value}\n")
    assert f"limits.{field}: " in message


def test_routes_are_required_without_a_control_socket() -> None:
    """Routes may all come from the control API (the libvirt hook), but only with one."""
    text = MINIMAL[: MINIMAL.index("[[routes]]")]
    assert "no routes and no control_socket" in refused(text)
    assert "no routes and no control_socket" in refused(text + "routes = []\n")
    config = parse_config((text + 'control_socket = "/run/smg.sock"\n').encode())
    assert config.routes == ()


def test_a_route_cannot_listen_on_its_own_upstream() -> None:
    text = MINIMAL.replace('upstream = "127.0.0.1:5901"', 'upstream = "127.0.0.1:5900"')
    assert text != MINIMAL
    assert "listen and upstream are the same address" in refused(text)


@pytest.mark.parametrize("value", ['"nowhere"', '"127.0.0.1:0"', "9100"])
def test_metrics_listen_must_be_an_address(value: str) -> None:
    text = MINIMAL[: MINIMAL.index("[[routes]]")] + f"metrics_listen = {value}\n"
    text += MINIMAL[MINIMAL.index("[[routes]]") :]
    assert "metrics_listen" in refused(text)


def test_a_bad_route_is_not_also_reported_as_a_missing_one() -> None:
    message = refused(MINIMAL.replace('name = "vm"', 'name = ""'))
    assert "at least 1 item" not in message
    assert "Value error" not in refused(MINIMAL.replace(":5900", ""))


@pytest.mark.parametrize(
    ("addition", "where"),
    [
        ("colour = 1\n[[routes]]", "colour: Extra inputs are not permitted"),
        ("[limits]\nmax_conections = 5\n[[routes]]", "limits.max_conections: Extra inputs"),
        ("[[peers]]\nhost_id = \"p\"\naddresses = [\"127.0.0.1:1\"]\nport = 1\n[[routes]]",
         "peers.0.port: Extra inputs"),
        ("[[routes]]\nlisten_on = \"127.0.0.1:1\"", "routes.0.listen_on: Extra inputs"),
    ],
)
def test_unknown_keys_are_refused(addition: str, where: str) -> None:
    assert where in refused(MINIMAL.replace("[[routes]]", addition, 1))


def second_route(name: str = "vm-2", listen: str = "127.0.0.1:5902") -> str:
    return (
        f'\n[[routes]]\nname = "{name}"\nlisten = "{listen}"\nupstream = "127.0.0.1:5903"\n'
        f'vm_id = "{uuid.UUID(int=9)}"\n'
    )


def test_duplicate_route_names_are_refused() -> None:
    assert "route names must be unique" in refused(MINIMAL + second_route(name="vm"))


@pytest.mark.parametrize("listen", ["127.0.0.1:5900"])
def test_duplicate_listen_addresses_are_refused(listen: str) -> None:
    assert "two routes listen on the same address" in refused(MINIMAL + second_route(listen=listen))


@pytest.mark.parametrize("listen", ["127.0.0.1:5901"])
def test_a_route_listening_on_another_routes_upstream_is_refused(listen: str) -> None:
    """vm forwards to 127.0.0.1:5901: a route listening there would catch vm's clients."""
    assert "a route's upstream is a route's listen address" in refused(
        MINIMAL + second_route(listen=listen)
    )


def test_equal_ipv6_spellings_are_one_listen_address() -> None:
    text = MINIMAL.replace("127.0.0.1:5900", "[::1]:5900") + second_route(listen="[0::1]:5900")
    assert "two routes listen on the same address" in refused(text)


def test_distinct_routes_are_fine() -> None:
    config = parse_config((MINIMAL + second_route()).encode())
    assert [r.name for r in config.routes] == ["vm", "vm-2"]


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ('tls_cert = "c.pem"', "tls_cert and tls_key go together"),
        ('tls_key = "k.pem"', "tls_cert and tls_key go together"),
        ('upstream_ca = "ca.pem"', "upstream_ca needs upstream_tls = true"),
        ('tls_cert = 1\ntls_key = "k.pem"', "routes.0.tls_cert"),
    ],
)
def test_tls_settings_come_in_pairs(tls: str, message: str) -> None:
    text = MINIMAL.replace(f'vm_id = "{VM}"', f'vm_id = "{VM}"\n{tls}')
    assert message in refused(text)


def test_tls_pair_is_accepted() -> None:
    text = MINIMAL.replace(f'vm_id = "{VM}"', f'vm_id = "{VM}"\ntls_cert = "c"\ntls_key = "k"')
    route = parse_config(text.encode()).routes[0]
    assert (route.tls_cert, route.tls_key) == ("c", "k")


def peer(host_id: str = "p", addresses: str = '["127.0.0.1:1"]') -> str:
    return f'\n[[peers]]\nhost_id = "{host_id}"\naddresses = {addresses}\n'


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        (peer(addresses="[]"), "peers.0.addresses"),
        (peer(addresses='["nowhere"]'), "peers.0.addresses"),
        (peer(addresses='"127.0.0.1:1"'), "peers.0.addresses"),
        (peer(host_id=""), "peers.0.host_id"),
        (peer() + peer(), "peer host ids must be unique and differ from host_id"),
        (peer(host_id="h"), "peer host ids must be unique and differ from host_id"),
    ],
)
def test_bad_peers_are_refused(peers: str, message: str) -> None:
    assert message in refused(MINIMAL + peers)


def test_peers_are_trusted_sources() -> None:
    config = parse_config((MINIMAL + peer("a") + peer("b", '["10.0.0.2:5900"]')).encode())
    assert config.trusted_sources == frozenset({"a", "b"})
    assert config.peer_for_address("10.0.0.2", 5900) == "b"


def test_not_toml_is_refused() -> None:
    assert "not valid TOML" in refused('host_id = "h"\nhost_id = "again"\n')
    assert "not valid TOML" in refused("[[routes]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config(b'host_id = "\xff"\n')


def test_size_limit() -> None:
    padding = "#" * (MAX_CONFIG_BYTES - len(MINIMAL) - 1) + "\n"
    assert len((MINIMAL + padding).encode()) == MAX_CONFIG_BYTES
    parse_config((MINIMAL + padding).encode())
    message = refused(MINIMAL + padding + "#")
    assert f"larger than {MAX_CONFIG_BYTES} bytes" in message


def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(MINIMAL.encode() + b"#" * (4 * MAX_CONFIG_BYTES))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="Is a directory"):
        load_config(tmp_path)


def test_messages_do_not_echo_values() -> None:
    secret = "s3cr3t-value-that-must-not-appear"
    message = refused(MINIMAL.replace('host_id = "h"', f'host_id = "{secret} x"'))
    assert secret not in message


@pytest.mark.parametrize(
    "field",
    [
        'listen = "127.0.0.1:5930' + "#" * 5000 + '"',
        'listen = "127.0.0.1:' + "9" * 5000 + '"',
        'listen = "[2001:db8::2' + "#" * 5000 + ']:5930"',
    ],
)
def test_refusal_stays_short_whatever_the_input(field: str) -> None:
    """Found by proxy_config_fuzzer: an address of any length used to be quoted whole."""
    text = (
        'host_id = "a"\nkeyring = "k"\nreplay_db = "r"\n[[routes]]\nname = "vm"\n'
        f'{field}\nupstream = "127.0.0.1:5900"\nvm_id = "9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42"\n'
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text.encode())
    assert "routes.0.listen" in str(refused.value)
    assert len(str(refused.value)) < 400


# --- the identity suite --------------------------------------------------------------------

IDENTITY_FILES = 'identity = "/etc/smg/identity.json"\ntrust_store = "/etc/smg/trust.json"\n'
PEER = '\n[[peers]]\nhost_id = "b"\naddresses = ["192.0.2.12:5901"]\n'


def with_top(text: str, addition: str) -> str:
    return text.replace('replay_db = "r.sqlite"\n', f'replay_db = "r.sqlite"\n{addition}')


def test_identity_files_and_suites_parse() -> None:
    config = parse_config(
        with_top(MINIMAL, IDENTITY_FILES + PEER + 'suite = "identity"\n').encode()
    )
    assert config.identity == "/etc/smg/identity.json"
    assert config.trust_store == "/etc/smg/trust.json"
    assert config.peers[0].suite == "identity"
    assert config.identity_peers == frozenset({"b"})
    plain = parse_config(MINIMAL.encode())
    assert plain.identity is None
    assert plain.trust_store is None
    assert plain.identity_peers == frozenset()


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        ('identity = "/etc/smg/identity.json"\n', "identity and trust_store go together"),
        ('trust_store = "/etc/smg/trust.json"\n', "identity and trust_store go together"),
        (PEER + 'suite = "identity"\n', "needs identity and trust_store"),
        (IDENTITY_FILES + PEER + 'suite = "none"\n', "peers.0.suite"),
        (IDENTITY_FILES + PEER + "suite = 1\n", "peers.0.suite"),
        ("identity = 5\ntrust_store = 6\n", "identity"),
    ],
)
def test_bad_identity_settings_are_refused(addition: str, message: str) -> None:
    assert message in refused(with_top(MINIMAL, addition))
def test_peer_link_defaults_fail_closed_with_a_short_lifetime() -> None:
    config = parse_config(MINIMAL.encode())
    assert config.peer_listen is None
    assert config.peer_link_down == "refuse"
    assert config.limits.blob_ttl == 10
    assert config.limits.peer_timeout == 5.0


def test_peer_link_settings_parse() -> None:
    text = 'peer_listen = "[::]:5999"\npeer_link_down = "first-blob"\n' + MINIMAL
    text += peer("b", '["10.0.0.2:5900"]') + 'peer_address = "10.0.0.2:5999"\n'
    config = parse_config(text.encode())
    assert config.peer_listen == "[::]:5999"
    assert config.peer_link_down == "first-blob"
    found = config.peer("b")
    assert found is not None
    assert found.peer_address == "10.0.0.2:5999"
    assert config.peer("c") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('peer_listen = "nowhere"\n' + MINIMAL, "is not HOST:PORT"),
        ('peer_listen = "127.0.0.1:5900"\n' + MINIMAL, "peer_listen is also a route's listen"),
        ('peer_link_down = "accept"\n' + MINIMAL, "peer_link_down"),
        (MINIMAL + peer() + 'peer_address = "x:0"\n', "peers.0.peer_address"),
        (MINIMAL + "\n[limits]\npeer_timeout = 0\n", "limits.peer_timeout"),
    ],
)
def test_bad_peer_link_settings_are_refused(text: str, message: str) -> None:
    assert message in refused(text)
