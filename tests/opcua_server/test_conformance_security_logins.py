"""Refused logins and connection limits, attacked with real clients and sockets.

Real parts: asyncua servers and clients on loopback (127.0.0.2 is a second
peer address: the whole 127/8 is local), raw TCP sockets, a real SQLite
journal, the server process as a real child. Expected values are worked out
by hand in the comments.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import re
import socket
from pathlib import Path
from typing import Any

import asyncua
import pytest
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.journal import Journal
from controller.metrics import MetricsServer, Sources, make_registry
from opcua_server import OpcUaConfig, UserConfig, connection_limits
from opcua_server.asyncua_gate import AsyncuaVersionError
from opcua_server.config import Role
from opcua_server.login_failures import FailureOutbox, LoginFailure, LoginFailureLog
from opcua_server.server import OpcUaServer, ServerSettings
from opcua_server.server_process import OpcUaServerProcess
from opcua_server.users import UserStore, hash_password, install_login_peer

from .conftest import PASSWORDS, USERS, demo_image, make_config, nid, ns_of, until

SC = ua.StatusCodes
VOLT = "buses/bus1/meters/000000000001/voltage_a"
PEER_A = "127.0.0.2"
PEER_B = "127.0.0.1"


def client_from(endpoint: str, source: str, user: str, password: str) -> Client:
    """An asyncua client whose TCP connection leaves from ``source`` (its peer address)."""
    client = Client(endpoint, timeout=10)
    client.set_user(user)
    client.set_password(password)
    uaclient = client.uaclient

    async def connect_socket(host: str, port: int) -> None:
        # asyncua's connect_socket, with a source address
        uaclient._set_state(UaClientState.CONNECTING)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    uaclient._make_protocol, host, port, local_addr=(source, 0)
                ),
                10,
            )
        except BaseException:
            uaclient._set_state(UaClientState.DISCONNECTED)
            raise
        uaclient._set_state(UaClientState.SOCKET_OPEN)

    uaclient.connect_socket = connect_socket  # type: ignore[method-assign]
    return client


async def refused_login(endpoint: str, source: str, user: str, password: str) -> int:
    """Try to log in; returns the status code the server refused it with."""
    client = client_from(endpoint, source, user, password)
    with pytest.raises(ua.UaStatusCodeError) as err:
        await client.connect()
    with contextlib.suppress(Exception):
        await client.disconnect()
    return int(err.value.code)


async def read_voltage(endpoint: str, source: str, user: str) -> float:
    async with client_from(endpoint, source, user, PASSWORDS[user]) as client:
        ns = await ns_of(client)
        return float(await client.get_node(nid(ns, VOLT)).read_value())


class ScryptCalls:
    """Counts hashlib.scrypt calls (each one still hashes for real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bytes, int, int, int]] = []  # salt, n, r, p
        real = hashlib.scrypt

        @functools.wraps(real)
        def scrypt(password: bytes, *, salt: bytes, n: int, r: int, p: int, **kw: Any) -> bytes:
            self.calls.append((salt, n, r, p))
            return real(password, salt=salt, n=n, r=r, p=p, **kw)

        monkeypatch.setattr(hashlib, "scrypt", scrypt)


def salt_of(encoded: str) -> bytes:
    import base64

    return base64.b64decode(encoded.split("$")[4])


# -- back-off per user and peer ---------------------------------------------------------------


async def test_wrong_passwords_from_one_peer_do_not_lock_the_user_out_of_another(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[LoginFailure] = []
    image = demo_image()
    # a long back-off, so "still backed off" below cannot depend on how fast the machine is
    srv = await start_server(
        image,
        config_overrides={"login_backoff_s": 300.0, "login_backoff_max_s": 600.0},
        login_failures=failures.append,
    )
    image.write(VOLT, 229.0)
    scrypt = ScryptCalls(monkeypatch)
    for _ in range(5):
        code = await refused_login(srv.endpoint, PEER_A, "otto", "guess")
        assert code == SC.BadUserAccessDenied
    # 3 free attempts hashed; attempts 4 and 5 refused before any hashing
    assert len(scrypt.calls) == 3
    assert [f.reason for f in failures] == ["bad_password"] * 3 + ["backed_off"] * 2
    assert {(f.user, f.peer) for f in failures} == {("otto", PEER_A)}

    # the right password from another peer works at once
    assert await read_voltage(srv.endpoint, PEER_B, "otto") == 229.0
    # while the guessing peer stays backed off, even with the right password
    code = await refused_login(srv.endpoint, PEER_A, "otto", PASSWORDS["otto"])
    assert code == SC.BadUserAccessDenied
    assert failures[-1].reason == "backed_off"
    stats = srv.stats()
    assert stats["login_failures"]["bad_password"] == 3
    assert stats["login_failures"]["backed_off"] == 3  # attempts 4, 5 and the right password
    assert stats["logins_rejected"] == 6


def test_backoff_doubles_from_one_second_to_sixty_and_skips_hashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    store = UserStore(
        [UserConfig(name="otto", password_hash=hash_password("pw", n=2**4), role=Role.OPERATOR)],
        anonymous=False,
        clock=lambda: now[0],
    )  # defaults: 3 free attempts, 1 s doubling to 60 s
    scrypt = ScryptCalls(monkeypatch)
    for _ in range(3):
        assert store.authenticate("otto", "wrong", "10.0.0.9") is None
    # failure k ≥ 3 starts a wait of min(60, 1 · 2^(k−3)) s: 1, 2, 4, 8, 16, 32, 60, 60
    for wait in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0):
        hashed = len(scrypt.calls)
        now[0] += wait - 0.001
        assert store.authenticate("otto", "pw", "10.0.0.9") is None  # still waiting
        assert len(scrypt.calls) == hashed  # refused without hashing
        now[0] += 0.001
        assert store.authenticate("otto", "wrong", "10.0.0.9") is None  # hashed, failed again
        assert len(scrypt.calls) == hashed + 1
    # 3 + 8 wrong passwords hashed; 8 refused while waiting
    assert store.failures["bad_password"] == 11
    assert store.failures["backed_off"] == 8
    # the same user from another peer, and another user from this peer, are not held
    assert store.authenticate("otto", "pw", "10.0.0.10") is not None
    assert store.authenticate("nobody", "x", "10.0.0.9") is None
    assert store.failures["unknown_user"] == 1
    # after the 60 s wait the right password works and clears the pair
    now[0] += 60.0
    assert store.authenticate("otto", "pw", "10.0.0.9") is not None
    assert store.backoff.failures(("otto", "10.0.0.9")) == 0


def test_unknown_and_known_users_take_the_same_path(monkeypatch: pytest.MonkeyPatch) -> None:
    store = UserStore(USERS, anonymous=False)
    scrypt = ScryptCalls(monkeypatch)
    assert store.authenticate("otto", "wrong", "10.0.0.9") is None
    assert store.authenticate("no-such-user", "wrong", "10.0.0.9") is None
    known, unknown = scrypt.calls
    # one scrypt each, at the configured users' cost (n = 2^10, r = 8, p = 1 in conftest)
    assert known[1:] == unknown[1:] == (2**10, 8, 1)
    otto = next(u for u in USERS if u.name == "otto")
    assert known[0] == salt_of(otto.password_hash)
    assert unknown[0] == salt_of(store.dummy_hash)  # the dummy hash, not a shortcut
    assert store.failures["bad_password"] == store.failures["unknown_user"] == 1


def test_a_flood_of_made_up_names_leaves_the_table_at_its_bound() -> None:
    # the cheapest legal scrypt (n=2, r=1) keeps 20 000 verifications quick; the
    # dummy hash takes the configured users' cost, so it is cheap too
    store = UserStore(
        [UserConfig(name="otto", password_hash=hash_password("pw", n=2, r=1), role=Role.OPERATOR)],
        anonymous=False,
        table_size=10_000,
    )
    for i in range(20_000):
        assert store.authenticate(f"user{i:05d}", "x", "10.0.0.66") is None
    assert len(store.backoff) == 10_000
    # least recently used first out: names 0–9 999 are gone, 10 000–19 999 kept
    assert store.backoff.failures(("user09999", "10.0.0.66")) == 0
    assert store.backoff.failures(("user10000", "10.0.0.66")) == 1
    assert store.failures["unknown_user"] == 20_000
    # a 1 MB user name is kept as its first 128 characters
    store.authenticate("x" * 1_000_000, "x", "10.0.0.66")
    assert len(store.backoff) == 10_000
    assert store.backoff.failures(("x" * 128, "10.0.0.66")) == 1


def test_record_failure_takes_only_the_known_reasons() -> None:
    seen: list[LoginFailure] = []
    store = UserStore(USERS, anonymous=False, on_failure=seen.append)
    with pytest.raises(ValueError, match="not one of unknown_user, bad_password, backed_off"):
        store.record_failure("otto", "10.0.0.9", "bored")
    assert seen == [] and store.rejected == 0
    store.record_failure("otto", "10.0.0.9", "reconnect_refused")
    store.record_failure("otto", "10.0.0.9", "plaintext_refused")
    assert [(f.user, f.peer, f.reason) for f in seen] == [
        ("otto", "10.0.0.9", "reconnect_refused"),
        ("otto", "10.0.0.9", "plaintext_refused"),
    ]
    assert store.rejected == 2


def test_config_limits_name_the_field_and_range() -> None:
    with pytest.raises(ValueError, match=r"max_connections_per_peer \(32\) must be at most"):
        OpcUaConfig(max_connections=16, max_connections_per_peer=32)
    with pytest.raises(ValueError, match=r"login_backoff_max_s \(0\.5 s\) must be at least"):
        OpcUaConfig(login_backoff_s=1.0, login_backoff_max_s=0.5)
    with pytest.raises(ValueError, match="activation_timeout_s"):
        OpcUaConfig(activation_timeout_s=0)
    cfg = OpcUaConfig()
    assert (cfg.login_free_attempts, cfg.login_backoff_s, cfg.login_backoff_max_s) == (3, 1.0, 60.0)
    assert (cfg.max_connections_per_peer, cfg.max_sessions, cfg.activation_timeout_s) == (
        16,
        100,
        5.0,
    )


async def test_an_untrusted_client_certificate_is_a_refused_login(
    start_server: Any, tmp_path: Path
) -> None:
    def make_cert(name: str, uri: str) -> tuple[Path, Path]:
        key = cert_gen.generate_private_key()
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            name,
            {"organizationName": "test"},
            [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        cert_path, key_path = tmp_path / f"{name}.der", tmp_path / f"{name}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
        return cert_path, key_path

    # the server's trust list (<state_dir>/pki/trusted) holds another client's certificate
    friend, _ = make_cert("friend", "urn:gridctl:friend")
    trusted = tmp_path / "pki" / "trusted"
    trusted.mkdir(parents=True)
    (trusted / "friend.der").write_bytes(friend.read_bytes())
    uri = "urn:gridctl:stranger"
    cert_path, key_path = make_cert("stranger", uri)
    failures: list[LoginFailure] = []
    srv = await start_server(
        config_overrides={
            "security_policies": ["Basic256Sha256"],
            "client_certificates": "trust-list",
        },
        login_failures=failures.append,
    )
    client = client_from(srv.endpoint, PEER_A, "otto", PASSWORDS["otto"])
    client.application_uri = uri
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert_path),
        str(key_path),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    with pytest.raises(ua.UaStatusCodeError) as err:
        await client.connect()
    with contextlib.suppress(Exception):
        await client.disconnect()
    # Refused at the channel open without saying why (Part 6: the trust list is not revealed).
    assert err.value.code == SC.BadSecurityChecksFailed
    assert [(f.user, f.peer, f.reason) for f in failures] == [("", PEER_A, "untrusted_certificate")]


# -- journal and metric -------------------------------------------------------------------------


def metric_text(log: LoginFailureLog) -> str:
    registry, collector = make_registry(Sources(login_failures=lambda: log.counts))
    return MetricsServer(registry, collector).render().decode()


async def test_a_refused_login_is_journaled_and_counted_inline(
    start_server: Any, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    try:
        log = LoginFailureLog(journal)
        srv = await start_server(login_failures=log.record)
        assert await refused_login(srv.endpoint, PEER_A, "otto", "guess") == SC.BadUserAccessDenied
        assert await refused_login(srv.endpoint, PEER_A, "mallory", "x") == SC.BadUserAccessDenied
        await journal.flush()
        rows = journal.query("SELECT user, peer, reason FROM login_failures ORDER BY seq")
        assert [tuple(r) for r in rows] == [
            ("otto", PEER_A, "bad_password"),
            ("mallory", PEER_A, "unknown_user"),
        ]
        text = metric_text(log)
        assert 'gridctl_opcua_login_failures_total{reason="bad_password"} 1.0' in text
        assert 'gridctl_opcua_login_failures_total{reason="unknown_user"} 1.0' in text
        assert 'gridctl_opcua_login_failures_total{reason="backed_off"} 0.0' in text
    finally:
        journal.close()


async def test_a_refused_login_crosses_from_the_server_process_to_the_journal(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    log = LoginFailureLog(journal)
    server = OpcUaServerProcess(
        make_config(), demo_image(), state_dir=tmp_path / "opcua", login_failures=log.receive
    )
    try:
        await server.start()
        code = await refused_login(server.endpoint, PEER_A, "otto", "guess")
        assert code == SC.BadUserAccessDenied

        def journaled() -> list[tuple[Any, ...]]:
            return [
                tuple(r) for r in journal.query("SELECT user, peer, reason FROM login_failures")
            ]

        assert await until(journaled) == [("otto", PEER_A, "bad_password")]
        assert log.counts["bad_password"] == 1
        assert 'gridctl_opcua_login_failures_total{reason="bad_password"} 1.0' in metric_text(log)
    finally:
        await server.stop()
        journal.close()


async def test_malformed_failure_frames_change_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    try:
        log = LoginFailureLog(journal)
        log.receive(
            {
                "t": "login_failures",
                "counts": {
                    "bored": 5,
                    "bad_password": -1,
                    "unknown_user": 10**12,
                    "backed_off": "3",
                },
                "records": [
                    [1.0, "otto", "10.0.0.9", "bored"],
                    ["yesterday", "otto", "10.0.0.9", "bad_password"],
                    [1.0, "otto", "10.0.0.9"],
                    "otto",
                    [1.0, None, "10.0.0.9", "bad_password"],
                ],
                "lost": -7,
            }
        )
        await journal.flush()
        assert journal.query("SELECT count(*) FROM login_failures")[0][0] == 0
        assert set(log.counts.values()) == {0}
        assert log.bad_records == 4 + 5  # four counts, five records
        assert log.not_journaled == 0
        log.receive({"t": "login_failures", "counts": 7, "records": 7, "lost": "x"})
        assert set(log.counts.values()) == {0}
        assert log.bad_records == 9 + 1  # the records field; counts not a map is skipped
    finally:
        journal.close()


def test_the_outbox_is_bounded_and_its_counts_stay_exact() -> None:
    outbox = FailureOutbox(limit=256)
    for i in range(1000):
        outbox.add(LoginFailure.make(f"u{i}", "10.0.0.9", "unknown_user"))
    frame = outbox.frame()
    assert frame is not None
    assert frame["counts"] == {"unknown_user": 1000}
    assert len(frame["records"]) == 256
    assert frame["lost"] == 1000 - 256  # 744
    assert outbox.frame() is None  # nothing new since


# -- connections ----------------------------------------------------------------------------


async def open_idle(port: int, source: str, count: int) -> list[tuple[Any, asyncio.Task[bytes]]]:
    """``count`` TCP connections from ``source`` that never send a byte; each with a
    task that ends when the server closes it."""
    sockets = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        sockets.append((writer, asyncio.ensure_future(_eof(reader))))
    return sockets


async def _eof(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(1)
    except ConnectionError:
        return b""


def closed(sockets: list[tuple[Any, asyncio.Task[bytes]]]) -> int:
    return sum(1 for _, task in sockets if task.done())


async def close_all(sockets: list[tuple[Any, asyncio.Task[bytes]]]) -> None:
    for writer, task in sockets:
        writer.close()
        task.cancel()
    await asyncio.gather(*(t for _, t in sockets), return_exceptions=True)


async def test_a_thousand_idle_sockets_cannot_lock_a_client_out(start_server: Any) -> None:
    image = demo_image()
    srv = await start_server(
        image,
        config_overrides={
            "max_connections": 64,
            "max_connections_per_peer": 16,
            "activation_timeout_s": 1.0,
        },
    )
    image.write(VOLT, 231.0)
    port = int(srv.config.port)
    flood: list[tuple[Any, asyncio.Task[bytes]]] = []
    try:
        # another peer's flood: beyond its 16, each connection is closed at once
        flood = await open_idle(port, PEER_A, 1000)
        await until(lambda: len(flood) - closed(flood) <= 16)
        # never more than 16 held at once (when opening the 1000 takes longer than
        # activation_timeout_s, idle ones closed meanwhile make room for others)
        stats = srv.stats()
        assert stats["connections_peak_per_peer"] == 16
        refused = stats["connections_refused_per_peer"]
        assert await read_voltage(srv.endpoint, PEER_B, "otto") == 231.0
        # the ones it kept never activated a session: closed after activation_timeout_s
        await until(lambda: closed(flood) == 1000)
        assert all(task.result() == b"" for _, task in flood)
        await close_all(flood)

        # a flood from the client's own address: refused beyond 16, the rest
        # closed when idle, and then the client gets in
        flood = await open_idle(port, PEER_B, 1000)
        await until(lambda: closed(flood) == 1000)
        assert srv.stats()["connections_refused_per_peer"] > refused
        assert srv.stats()["connections_peak_per_peer"] == 16
        assert await read_voltage(srv.endpoint, PEER_B, "otto") == 231.0
    finally:
        await close_all(flood)


async def test_sessions_are_bounded_in_total(start_server: Any) -> None:
    image = demo_image()
    srv = await start_server(image, config_overrides={"max_sessions": 2})
    image.write(VOLT, 230.0)
    first = client_from(srv.endpoint, PEER_A, "otto", PASSWORDS["otto"])
    second = client_from(srv.endpoint, PEER_B, "vera", PASSWORDS["vera"])
    await first.connect()
    try:
        await second.connect()
        try:
            code = await refused_login(srv.endpoint, PEER_B, "emma", PASSWORDS["emma"])
            assert code == SC.BadMaxConnectionsReached
        finally:
            await second.disconnect()
        # a session closed frees its place
        assert await read_voltage(srv.endpoint, PEER_B, "emma") == 230.0
    finally:
        await first.disconnect()


# -- the asyncua patches ------------------------------------------------------------------------


def test_the_login_peer_wrapper_is_installed_once_and_under_other_wrappers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(InternalSession, "activate_session", InternalSession.activate_session)
    monkeypatch.setattr(InternalSession, "create_session", InternalSession.create_session)
    install_login_peer()
    mine = InternalSession.activate_session
    install_login_peer()
    assert InternalSession.activate_session is mine

    calls: list[str] = []

    @functools.wraps(mine)
    def outer(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("outer")
        return mine(self, *args, **kwargs)

    InternalSession.activate_session = outer  # type: ignore[method-assign]
    install_login_peer()
    assert InternalSession.activate_session is outer  # not wrapped a second time
    assert inspect.iscoroutinefunction(InternalSession.create_session)  # still awaitable


async def test_security_patches_refuse_another_asyncua_minor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    with pytest.raises(AsyncuaVersionError, match=r"per-peer login back-off.*2\.2\.0"):
        install_login_peer()
    with pytest.raises(AsyncuaVersionError, match=r"connection limits.*2\.2\.0"):
        connection_limits.apply(asyncua.Server().iserver, make_config())
    srv = OpcUaServer(make_config(), demo_image(), ServerSettings(state_dir=tmp_path))
    with pytest.raises(AsyncuaVersionError, match=re.escape("asyncua>=2.1,<2.2")):
        await srv.start()
