"""Refused OPC UA logins on their way to the journal and the metrics.

The server (:class:`~opcua_server.users.UserStore.record_failure`) makes one
:class:`LoginFailure` per refusal. With the server in its own process a
:class:`FailureOutbox` holds them until the next ``stats`` period and sends a
``login_failures`` frame (counts per reason, and at most ``limit`` records: a
flood of failures must not become a flood of frames or journal rows); inline,
the server hands each failure straight to the controller's
:class:`LoginFailureLog`, which journals it (``login_failures`` table) and
counts it per reason for ``gridctl_opcua_login_failures_total``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

_log = logging.getLogger("gridctl.opcua.logins")

# Why a login was refused; the metric's label values.
REASONS: tuple[str, ...] = (
    "unknown_user",
    "bad_password",
    "backed_off",
    "untrusted_certificate",
    "reconnect_refused",
    "plaintext_refused",
)
# Client-chosen text is cut to these lengths before it is kept anywhere.
MAX_USER_CHARS = 128
MAX_PEER_CHARS = 64
OUTBOX_LIMIT = 256  # records per frame; the counts stay exact beyond it
# A frame's count for one reason above this is not believed (a broken peer).
MAX_FRAME_COUNT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class LoginFailure:
    at: float  # epoch seconds
    user: str
    peer: str  # the client's host address
    reason: str

    @classmethod
    def make(cls, user: str, peer: str, reason: str, at: float | None = None) -> LoginFailure:
        if reason not in REASONS:
            raise ValueError(f"login failure reason {reason!r} is not one of {', '.join(REASONS)}")
        return cls(
            time.time() if at is None else at,
            str(user)[:MAX_USER_CHARS],
            str(peer)[:MAX_PEER_CHARS],
            reason,
        )

    def row(self) -> list[Any]:
        return [self.at, self.user, self.peer, self.reason]

    @classmethod
    def from_row(cls, row: Any) -> LoginFailure:
        """A record from a ``login_failures`` frame; ValueError names what is wrong."""
        if not isinstance(row, Sequence) or isinstance(row, str | bytes) or len(row) != 4:
            raise ValueError(f"login failure record must be [at, user, peer, reason], got {row!r}")
        at, user, peer, reason = row
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise ValueError(f"login failure 'at' must be epoch seconds, got {at!r}")
        if not isinstance(user, str) or not isinstance(peer, str):
            raise ValueError("login failure 'user' and 'peer' must be strings")
        return cls.make(user, peer, str(reason), float(at))


class FailureJournal(Protocol):
    def login_failure(self, at: float, user: str, peer: str, reason: str) -> bool: ...


class LoginFailureLog:
    """The controller's side: every failure journaled, counted per reason."""

    def __init__(self, journal: FailureJournal | None) -> None:
        self.journal = journal
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.not_journaled = 0  # records the server process could not send (outbox full)
        self.bad_records = 0  # records or counts from the channel that were malformed

    def record(self, failure: LoginFailure) -> None:
        """One failure seen in this process (the inline server)."""
        self.counts[failure.reason] += 1
        self._journal(failure)

    def receive(self, message: Mapping[str, Any]) -> None:
        """A ``login_failures`` frame from the server process."""
        counts = message.get("counts")
        if isinstance(counts, Mapping):
            for reason, n in counts.items():
                if (
                    reason in self.counts
                    and isinstance(n, int)
                    and not isinstance(n, bool)
                    and 0 <= n <= MAX_FRAME_COUNT
                ):
                    self.counts[reason] += n
                else:
                    self.bad_records += 1
        records = message.get("records")
        if not isinstance(records, list | tuple):
            if records is not None:
                self.bad_records += 1
            records = ()
        for row in records:
            try:
                failure = LoginFailure.from_row(row)
            except ValueError as exc:
                self.bad_records += 1
                _log.warning("login_failures frame: %s", exc)
                continue
            self._journal(failure)
        lost = message.get("lost")
        if isinstance(lost, int) and 0 < lost <= MAX_FRAME_COUNT:
            self.not_journaled += lost

    def _journal(self, failure: LoginFailure) -> None:
        if self.journal is not None:
            self.journal.login_failure(failure.at, failure.user, failure.peer, failure.reason)


class FailureOutbox:
    """The server process's side: failures waiting for the next frame, bounded."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._records: deque[LoginFailure] = deque()
        self._counts: dict[str, int] = {}
        self._lost = 0

    def add(self, failure: LoginFailure) -> None:
        self._counts[failure.reason] = self._counts.get(failure.reason, 0) + 1
        if len(self._records) >= self.limit:
            self._lost += 1  # still counted; only the journal row is missing
            return
        self._records.append(failure)

    def frame(self) -> dict[str, Any] | None:
        """The next ``login_failures`` frame, or None when nothing happened."""
        if not self._counts:
            return None
        message = {
            "t": "login_failures",
            "counts": self._counts,
            "records": [f.row() for f in self._records],
            "lost": self._lost,
        }
        self._records = deque()
        self._counts = {}
        self._lost = 0
        return message
