"""Session Base / Session Change User / Session Reconnect (Part 4 §5.6, §6.7), attacked.

An attacker on the network opens its own SecureChannel and sends
ActivateSession carrying another session's AuthenticationToken. On the
pinned asyncua as shipped, the reconnect path attached the victim's session
to the attacker's channel *before* checking anything, so a refused
activation still left the channel holding the operator's session. Here the
attacker even knows the victim's real token (sniffed off a Sign-only channel,
say): without the victim's own credentials it must get nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from asyncua import Client, ua

from opcua_server import OpcUaServer, session_guard
from opcua_server.asyncua_gate import AsyncuaVersionError

from .conftest import PASSWORDS, client_for, nid, ns_of
from .test_methods import FakeSink

SC = ua.StatusCodes
LOAD = "loads/feeder1_l1"
# The attacks send their guesses as plain passwords; allowing that on loopback
# makes sure the identity checks, not the transport rule, are what stop them.
PLAIN = {"allow_plaintext_password_on_loopback": True}


async def bare_channel(srv: OpcUaServer) -> Client:
    """A client with an open SecureChannel (security None) and no session of its own."""
    client = Client(srv.endpoint, timeout=5)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    return client


def username_token(user: str, password: str) -> ua.UserNameIdentityToken:
    # Over security None asyncua's server takes the password as sent (no
    # EncryptionAlgorithm): the attacker needs no server certificate for this.
    return ua.UserNameIdentityToken(PolicyId="username", UserName=user, Password=password.encode())


async def activate_with_token(
    client: Client, token: ua.NodeId, identity: Any
) -> ua.ActivateSessionResult:
    client.uaclient.protocol.authentication_token = token
    params = ua.ActivateSessionParameters()
    params.UserIdentityToken = identity
    return await client.uaclient.activate_session(params)


async def call(client: Client, obj: ua.NodeId, method: ua.NodeId, *args: Any) -> Any:
    request = ua.CallMethodRequest(
        ObjectId=obj, MethodId=method, InputArguments=[ua.Variant(a) for a in args]
    )
    return (await client.uaclient.call([request]))[0]


async def close_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        await client.close_secure_channel()
    client.disconnect_socket()


async def expect_status(code: int, coro: Any) -> None:
    with pytest.raises(ua.UaStatusCodeError) as err:
        await coro
    assert err.value.code == code, ua.StatusCode(err.value.code).name


async def test_authentication_tokens_are_32_random_bytes_not_a_counter(start_server):
    srv = await start_server()
    tokens, ids = [], []
    for user in ("otto", "vera", None):
        async with client_for(srv, user) as client:
            tokens.append(client.uaclient.protocol.authentication_token)
            ids.append(
                client.uaclient._session_id if hasattr(client.uaclient, "_session_id") else None
            )
    for token in tokens:
        assert token.NodeIdType == ua.NodeIdType.ByteString
        assert len(token.Identifier) >= 32
    # Three sessions, three different tokens (2⁻²⁵⁶ chance of a collision).
    assert len({t.Identifier for t in tokens}) == 3


async def test_session_ids_are_not_sequential(start_server):
    srv = await start_server()
    async with client_for(srv, "otto") as a, client_for(srv, "vera") as b:
        id_a = srv.server.iserver._external_sessions  # type: ignore[union-attr]
        sessions = list(id_a.values())
        assert {s.session_id.NodeIdType for s in sessions} == {ua.NodeIdType.ByteString}
        assert len({s.session_id.Identifier for s in sessions}) == len(sessions) >= 2
        assert a.uaclient.protocol.authentication_token != b.uaclient.protocol.authentication_token


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(username_token("otto", "guess"), id="victim-name-wrong-password"),
        pytest.param(username_token("nobody", "guess"), id="unknown-user"),
        pytest.param(ua.AnonymousIdentityToken(PolicyId="anonymous"), id="anonymous"),
        # A valid login, but as someone else: the session keeps its user.
        pytest.param(username_token("vera", PASSWORDS["vera"]), id="another-valid-user"),
    ],
)
async def test_refused_reconnect_leaves_the_channel_without_the_victims_session(
    start_server, identity
):
    sink = FakeSink()
    srv = await start_server(commands=sink, config_overrides=PLAIN)
    async with client_for(srv, "otto") as victim:
        ns = await ns_of(victim)
        token = victim.uaclient.protocol.authentication_token
        attacker = await bare_channel(srv)
        try:
            with pytest.raises(ua.UaStatusCodeError):
                await activate_with_token(attacker, token, identity)
            # The channel has no session: WhoAmI and Arm are refused, and
            # nothing reached the command sink.
            whoami = nid(ns, "@gridctl/WhoAmI")
            with pytest.raises(ua.UaStatusCodeError) as err:
                await call(attacker, nid(ns, "@gridctl"), whoami)
            assert err.value.code in (SC.BadSessionIdInvalid, SC.BadUserAccessDenied)
            arm = nid(ns, f"{LOAD}/Arm")
            with pytest.raises(ua.UaStatusCodeError):
                await call(attacker, nid(ns, LOAD), arm, "trip", "takeover")
            assert sink.requests == []
        finally:
            await close_quietly(attacker)
        # The victim's session is untouched: still the operator, still arming.
        user, role = await victim.get_node(nid(ns, "@gridctl")).call_method(f"{ns}:WhoAmI")
        assert (user, role) == ("otto", "operator")
        token2, _ = await victim.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "ok")
        assert isinstance(token2, str)


async def test_guessing_tokens_on_one_channel_takes_over_nothing(start_server):
    """The attack as first found: the attacker's own token minus one, then neighbours."""
    srv = await start_server(commands=FakeSink(), config_overrides=PLAIN)
    async with client_for(srv, "otto") as victim, client_for(srv, "vera") as own:
        ns = await ns_of(victim)
        mine = own.uaclient.protocol.authentication_token
        guesses = [ua.NodeId(1000 + i) for i in range(8)] + [
            ua.NodeId(mine.Identifier, mine.NamespaceIndex, mine.NodeIdType)
        ]
        attacker = await bare_channel(srv)
        try:
            for guess in guesses:
                with pytest.raises(ua.UaStatusCodeError):
                    await activate_with_token(attacker, guess, username_token("otto", "x"))
            with pytest.raises(ua.UaStatusCodeError):
                await call(attacker, nid(ns, "@gridctl"), nid(ns, "@gridctl/WhoAmI"))
        finally:
            await close_quietly(attacker)
        assert await victim.get_node(nid(ns, "@gridctl")).call_method(f"{ns}:WhoAmI") == [
            "otto",
            "operator",
        ]


async def test_reconnect_with_the_same_users_credentials_moves_the_session(start_server):
    # The bare channel sends its password unencrypted: allowed on loopback when
    # the config says so (the demo).
    srv = await start_server(commands=FakeSink(), config_overrides=PLAIN)
    victim = client_for(srv, "otto")
    await victim.connect()
    try:
        ns = await ns_of(victim)
        token = victim.uaclient.protocol.authentication_token
        # The operator's client lost its connection and comes back on a new
        # channel with its own credentials: Part 4 §6.7 reconnect.
        again = await bare_channel(srv)
        try:
            await activate_with_token(again, token, username_token("otto", PASSWORDS["otto"]))
            result = await call(again, nid(ns, "@gridctl"), nid(ns, "@gridctl/WhoAmI"))
            assert result.StatusCode.is_good()
            assert [v.Value for v in result.OutputArguments] == ["otto", "operator"]
            # The session left the old channel: it cannot be used there any more.
            with pytest.raises(ua.UaStatusCodeError) as err:
                await victim.get_node(nid(ns, "@gridctl")).call_method(f"{ns}:WhoAmI")
            assert err.value.code == SC.BadSessionIdInvalid
        finally:
            await close_quietly(again)
    finally:
        await close_quietly(victim)


async def test_refused_reconnects_are_audited(start_server):
    srv = await start_server(config_overrides=PLAIN)
    async with client_for(srv, "otto") as victim:
        token = victim.uaclient.protocol.authentication_token
        attacker = await bare_channel(srv)
        try:
            with pytest.raises(ua.UaStatusCodeError):
                await activate_with_token(attacker, token, username_token("otto", "guess"))
        finally:
            await close_quietly(attacker)
    refused = srv.session_guard.refused
    assert [(r.user, r.peer, r.reason) for r in refused] == [
        ("otto", "127.0.0.1", "reconnect_refused")
    ]


async def plaintext_login(srv: OpcUaServer, user: str) -> None:
    client = await bare_channel(srv)
    try:
        params = ua.CreateSessionParameters(
            ClientDescription=ua.ApplicationDescription(ApplicationUri="urn:test"),
            EndpointUrl=srv.endpoint,
            SessionName="plain",
            RequestedSessionTimeout=60_000,
            MaxResponseMessageSize=0,
        )
        created = await client.uaclient.create_session(params)
        client.uaclient.protocol.authentication_token = created.AuthenticationToken
        activate = ua.ActivateSessionParameters()
        activate.UserIdentityToken = username_token(user, PASSWORDS[user])
        await client.uaclient.activate_session(activate)
    finally:
        await close_quietly(client)


async def test_plaintext_password_over_none_is_refused(start_server):
    # Loopback, and the config does not allow it: refused like anywhere else.
    srv = await start_server()
    await expect_status(SC.BadIdentityTokenRejected, plaintext_login(srv, "otto"))
    assert [(r.user, r.reason) for r in srv.session_guard.refused] == [
        ("otto", "plaintext_refused")
    ]


async def test_plaintext_password_over_a_sign_only_channel_is_refused(start_server, client_cert):
    """A non-loopback endpoint (0.0.0.0, every interface), a signed but unencrypted
    channel, and a client that sends its password without token encryption: the
    password would cross the network readable. Even asking for it in the config
    cannot allow it there (the config refuses that on a network endpoint)."""
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    from .conftest import free_port

    cert, key = client_cert
    port = free_port()
    srv = await start_server(
        config_overrides={
            "endpoint": f"opc.tcp://0.0.0.0:{port}/gridctl",
            "security_policies": ["Basic256Sha256"],
            "security_modes": ["Sign"],
            "anonymous": "off",
            "client_certificates": "trust-all",
        }
    )
    client = Client(f"opc.tcp://127.0.0.1:{port}/gridctl", timeout=5)
    client.application_uri = "urn:gridctl:test-client"
    await client.set_security(
        SecurityPolicyBasic256Sha256, str(cert), str(key), mode=ua.MessageSecurityMode.Sign
    )
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        await client.create_session()
        activate = ua.ActivateSessionParameters()
        activate.UserIdentityToken = username_token("otto", PASSWORDS["otto"])
        await expect_status(SC.BadIdentityTokenRejected, client.uaclient.activate_session(activate))
    finally:
        await close_quietly(client)
    assert [(r.user, r.reason) for r in srv.session_guard.refused] == [
        ("otto", "plaintext_refused")
    ]


async def test_plaintext_password_on_loopback_when_the_config_allows_it(start_server):
    srv = await start_server(config_overrides=PLAIN)
    await plaintext_login(srv, "otto")
    assert list(srv.session_guard.refused) == []


async def test_a_password_encrypted_for_the_server_crosses_a_none_channel(start_server):
    """asyncua's client encrypts the password with the server certificate (token policy)."""
    srv = await start_server()
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        assert await client.get_node(nid(ns, "@gridctl")).call_method(f"{ns}:WhoAmI") == [
            "otto",
            "operator",
        ]
    assert list(srv.session_guard.refused) == []


def test_the_guard_refuses_to_install_on_another_asyncua(monkeypatch):
    import asyncua

    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    with pytest.raises(AsyncuaVersionError, match=r"asyncua>=2\.1,<2\.2"):
        session_guard.install()
