"""Commands from the HMI: method calls and their refusals, which commands to
offer the session's role, and the server's ring of recent commands."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from .discovery import COMMAND_FIELDS, COMMAND_LAST_SLOT
from .values import SC, Quality, Reading, status_name, string_node

# Lowest role each command needs, as the server enforces it (methods.py); the
# HMI only offers what the session's role allows, the server has the last word.
ROLE_RANK = {"viewer": 0, "operator": 1, "engineer": 2, "admin": 3}
KIND_ROLE = {
    "keep_power_on": "engineer",
    "keep_power_off": "engineer",
    "set_demand_limit": "engineer",
}

# What a refusal means to an operator when the server sends no detail with it.
REFUSAL_TEXT = {
    SC.BadUserAccessDenied: "refused: your role does not allow this command",
    SC.BadInvalidState: "refused by the plant in its present state (BadInvalidState)",
    SC.BadNotSupported: "not supported by this server (BadNotSupported)",
}


class CommandError(Exception):
    """A method call the server refused; ``code`` is the OPC UA status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def denied(self) -> bool:
        return self.code == SC.BadUserAccessDenied

    @property
    def name(self) -> str:
        return status_name(self.code)


@dataclass(frozen=True, slots=True)
class RecentCommand:
    """One slot of the server's ring of recent commands (any client's, not only ours)."""

    command_id: str
    kind: str
    target: str
    user: str
    state: str  # queued, sent, confirmed, failed, expired, refused
    reason: str

    @property
    def terminal(self) -> bool:
        return self.state in ("confirmed", "failed", "expired", "refused")


def may_command(role: str | None, denied_kinds: set[str], kind: str | None = None) -> bool:
    """Whether to offer a command: anonymous never; a kind the server refused, no.

    A role the server did not name ("unknown") is offered everything: the
    server checks every call and a refusal is remembered per kind.
    """
    if role in (None, "anonymous", "viewer"):
        return False
    if kind is not None and kind in denied_kinds:
        return False
    needed = KIND_ROLE.get(kind or "", "operator")
    rank = ROLE_RANK.get(role or "")
    return rank is None or rank >= ROLE_RANK[needed]


def ring_paths(slots: Sequence[str]) -> list[str]:
    paths = [f"{slot}/{f}" for slot in slots for f in COMMAND_FIELDS]
    return [*paths, COMMAND_LAST_SLOT] if paths else []


def recent_commands(
    slots: Sequence[str], get: Callable[[str], Reading | None]
) -> list[RecentCommand]:
    """The ring's commands, newest first (by its LastSlot), empty slots left out."""
    if not slots:
        return []
    last = get(COMMAND_LAST_SLOT)
    start = int(last.value) if last is not None and isinstance(last.value, int) else 0
    out = []
    for i in range(len(slots)):
        slot = slots[(start - i) % len(slots)]
        fields = [get(f"{slot}/{f}") for f in COMMAND_FIELDS]
        if any(r is None or r.quality is not Quality.GOOD for r in fields):
            continue
        values = [str(r.value) for r in fields if r is not None]
        if values[0]:
            out.append(RecentCommand(*values))
    return out


async def call_method(
    client: Client, ns: int, object_path: str, method: str, args: list[str | list[str]]
) -> list[Any]:
    """Call ``object_path/method``; a refusal raises :class:`CommandError` in operator words."""
    req = ua.CallMethodRequest()
    req.ObjectId = string_node(object_path, ns)
    req.MethodId = string_node(f"{object_path}/{method}", ns)
    # Everything goes as String (or String[]): the server parses numbers given as text.
    req.InputArguments = [ua.Variant(a, ua.VariantType.String) for a in args]
    try:
        (res,) = await client.uaclient.call([req])
    except ua.UaStatusCodeError as exc:
        raise CommandError(exc.code, _refusal(exc.code, "")) from None
    if not res.StatusCode.is_good():
        detail = ""
        for info in res.InputArgumentDiagnosticInfos or []:
            if info is not None and info.AdditionalInfo:
                detail = info.AdditionalInfo
        raise CommandError(res.StatusCode.value, _refusal(res.StatusCode.value, detail))
    return [v.Value for v in res.OutputArguments or []]


def _refusal(code: int, detail: str) -> str:
    text = REFUSAL_TEXT.get(code, f"refused: {status_name(code)}")
    return f"{text} ({detail})" if detail else text
