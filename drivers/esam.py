"""ESAM: authenticated 1C and 0x14 frames for meters configured ``security = "esam"``.

Remote-cost-control meters (State Grid specifications since 2013) carry an
ESAM, a secure chip that acts on a remote control (1C) or a parameter write
(0x14, a per-meter clock set included) only when the frame is sealed with a
key the utility's crypto machine holds. The controller never sees that key:
an :class:`EsamAdapter` talks to whatever holds it.

The adapter interface is async because the real one is a network client of
the crypto machine; each call runs inside the bus owner's control slot and is
bounded by ``[esam] timeout_s``, so a crypto machine that does not answer
costs one command (``not sent``), never the bus. Every 1C and 0x14 to an
ESAM meter authenticates afresh (commands are rare; no session outlives its
command).

Broadcast time sync (0x08) is not sealed: it has no meter address to seal
for and no reply to check. A meter that accepts only sealed time setting is
set with 0x14 writes of 04000101/04000102, which are.

Adapters are chosen by ``[esam] adapter``: a built-in name, an entry point in
group ``gridctl.esam_adapters``, or ``"package.module:factory"``. A factory
takes the ``[esam] options`` table and returns an adapter; it must not do I/O
(it is also called once while the config is checked).

Built in:

``plaintext``
    Identity: the frame goes out as built. An ESAM meter refuses it (ERR 0x04).
``test-hmac``
    A keyed MAC for the simulator and tests, not a utility's scheme. Its wire
    contract (the simulated meter's ESAM card checks it by itself)::

        request data field (plain, before the +0x33 offset) = P || MAC
        MAC = HMAC-SHA256(key, A0..A5 || P)[:4]
        A0..A5 = the meter address as on the wire (BCD, low byte first)
        P      = the data field as built: 1C  PA P0-P2 C0-C3 N1 N2 ss mm hh DD MM YY (16 → 20 bytes)
                                          0x14 DI0-DI3 PA P0-P2 C0-C3 value (12+n → 16+n bytes)
        L grows by 4. Replies (9C, 94, exception replies) are plain: no MAC.
        A missing or wrong MAC: exception reply with ERR = 0x04.

    One key (``options.key``, hex) for every meter; no replay counter (the 1C
    expiry time bounds a replayed command's life).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from controller import _core_rs as core
from drivers.errors import EsamError, FrameCorrupt

if TYPE_CHECKING:
    from drivers.config import EsamConfig, MeterConfig
    from drivers.dlt645_client import Exchange

ENTRY_POINT_GROUP = "gridctl.esam_adapters"
# what an ESAM meter accepts only sealed
SEALED_FUNCTIONS = frozenset({core.FN_CONTROL, core.FN_WRITE})
MAC_BYTES = 4

S = TypeVar("S")


class EsamAdapter(Protocol[S]):
    """Authenticates to one meter's ESAM and seals frames for it; ``S`` is the session."""

    name: str

    async def authenticate(self, meter: MeterConfig) -> S:
        """A session for one command to ``meter``; raise when it cannot be had."""
        ...

    async def seal(self, session: S, payload: bytes) -> bytes:
        """The data field to send for the plain data field ``payload``."""
        ...

    async def open(self, session: S, reply: bytes) -> bytes:
        """The plain data of a normal reply; raise when the reply is not authentic."""
        ...


AdapterFactory = Callable[[Mapping[str, Any]], EsamAdapter[Any]]


# -- built-in adapters --------------------------------------------------------------------------


class PlaintextAdapter:
    """Identity: frames go out as built."""

    name = "plaintext"

    async def authenticate(self, meter: MeterConfig) -> None:
        return None

    async def seal(self, session: None, payload: bytes) -> bytes:
        return payload

    async def open(self, session: None, reply: bytes) -> bytes:
        return reply


def make_plaintext(options: Mapping[str, Any]) -> PlaintextAdapter:
    if options:
        raise ValueError(f"the plaintext adapter takes no options, got {sorted(options)}")
    return PlaintextAdapter()


@dataclass(frozen=True, slots=True)
class HmacSession:
    address_wire: bytes  # A0..A5
    key: bytes


class HmacTestAdapter:
    """The ``test-hmac`` wire contract (module docstring): a truncated HMAC-SHA256 appended."""

    name = "test-hmac"

    def __init__(self, key: bytes) -> None:
        self._key = key

    async def authenticate(self, meter: MeterConfig) -> HmacSession:
        return HmacSession(bytes.fromhex(meter.address)[::-1], self._key)

    async def seal(self, session: HmacSession, payload: bytes) -> bytes:
        mac = hmac.new(session.key, session.address_wire + payload, hashlib.sha256).digest()
        return payload + mac[:MAC_BYTES]

    async def open(self, session: HmacSession, reply: bytes) -> bytes:
        return reply  # 9C and 94 replies are plain


def make_test_hmac(options: Mapping[str, Any]) -> HmacTestAdapter:
    unknown = sorted(set(options) - {"key"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: the test-hmac adapter takes only 'key'")
    key = options.get("key")
    if (
        not isinstance(key, str)
        or not 2 <= len(key) <= 128
        or len(key) % 2
        or any(c not in "0123456789abcdefABCDEF" for c in key)
    ):
        raise ValueError(f"key must be 2..128 hex digits (whole bytes), got {key!r}")
    return HmacTestAdapter(bytes.fromhex(key))


BUILTIN: dict[str, AdapterFactory] = {"plaintext": make_plaintext, "test-hmac": make_test_hmac}


# -- loading ------------------------------------------------------------------------------------


def resolve_factory(spec: str) -> AdapterFactory:
    """The factory ``spec`` names; ValueError saying what was tried when there is none."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {exc}") from None
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ValueError(
                    f"module {module_name!r} has no {attr!r} (from {spec!r})"
                ) from None
    else:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        found = [ep for ep in eps if ep.name == spec]
        if not found:
            known = ", ".join(sorted(BUILTIN) + sorted(ep.name for ep in eps))
            raise ValueError(
                f"no ESAM adapter {spec!r}: give a built-in or an entry point in group "
                f"{ENTRY_POINT_GROUP} ({known}) or 'package.module:factory'"
            )
        try:
            obj = found[0].load()
        except Exception as exc:
            raise ValueError(
                f"entry point {spec!r} ({found[0].value}) does not load: {exc}"
            ) from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable: it must be a factory(options) -> adapter")
    factory: AdapterFactory = obj
    return factory


@dataclass(frozen=True, slots=True)
class Esam:
    """The adapter a field plant uses for its ESAM meters, and its time bound."""

    adapter: EsamAdapter[Any]
    timeout_s: float = 5.0

    @classmethod
    def from_config(cls, config: EsamConfig) -> Esam:
        return cls(resolve_factory(config.adapter)(config.options), config.timeout_s)


# -- the wire -----------------------------------------------------------------------------------


class EsamExchange:
    """An exchange that seals 1C and 0x14 requests to ESAM meters and passes the rest.

    Wraps the bus owner's exchange under its :class:`~drivers.dlt645_client.Dlt645Client`,
    so every 1C and 0x14 of the bus goes through it, whoever builds the request.
    Each attempt (the client retries timeouts) authenticates and seals afresh.
    Adapter failures before the wire are :class:`EsamError` (not sent); a reply the
    adapter will not open is :class:`FrameCorrupt` (the meter may have acted: the
    read-back decides).
    """

    def __init__(self, exchange: Exchange, esam: Esam, meters: Mapping[str, MeterConfig]) -> None:
        self._exchange = exchange
        self.esam = esam
        self._meters = meters

    async def __call__(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        reply: bool = True,
        di: bytes | None = None,
    ) -> core.Dlt645Frame | None:
        meter = self._meters.get(address)
        if function not in SEALED_FUNCTIONS or meter is None or meter.security != "esam":
            return await self._exchange(request, address, function, reply=reply, di=di)
        adapter = self.esam.adapter
        built = core.dlt645_decode(request)
        preamble = len(request) - len(request.lstrip(b"\xfe"))
        try:
            async with asyncio.timeout(self.esam.timeout_s):
                session = await adapter.authenticate(meter)
                sealed = await adapter.seal(session, built.data)
            request = core.dlt645_encode(address, built.control, sealed, preamble)
        except TimeoutError:
            raise EsamError(
                f"meter {address}: ESAM adapter {adapter.name!r} did not answer "
                f"within {self.esam.timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise EsamError(f"meter {address}: ESAM adapter {adapter.name!r}: {exc}") from exc
        frame = await self._exchange(request, address, function, reply=reply, di=di)
        if frame is None or frame.is_exception:
            return frame  # exception replies are plain: the client raises on their ERR bits
        try:
            async with asyncio.timeout(self.esam.timeout_s):
                data = await adapter.open(session, frame.data)
        except Exception as exc:
            raise FrameCorrupt(
                f"meter {address}: reply not opened by ESAM adapter {adapter.name!r}: {exc}"
            ) from exc
        return frame if data == frame.data else core.Dlt645Frame(frame.address, frame.control, data)
