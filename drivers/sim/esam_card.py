"""The simulated meter's ESAM: it checks the MAC of 1C and 0x14 frames by itself.

The ``test-hmac`` wire contract of ``drivers/esam.py``, computed here on its
own (the controller's adapter is the other side, not a helper): the request's
data field is ``P || MAC`` with ``MAC = HMAC-SHA256(key, A0..A5 || P)[:4]``,
A0..A5 the address as on the wire (low byte first). A frame without a valid
MAC is refused with ERR 0x04 by the meter.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from drivers.config import SimMeterConfig

MAC_BYTES = 4


@dataclass(slots=True)
class EsamCard:
    address: str
    key: bytes
    accepted: int = 0
    refused: int = 0

    def open(self, data: bytes) -> bytes | None:
        """The plain data field of a sealed request; None when its MAC is missing or wrong."""
        if len(data) < MAC_BYTES:
            self.refused += 1
            return None
        body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
        address_wire = bytes(int(self.address[i : i + 2], 16) for i in range(10, -1, -2))
        want = hmac.new(self.key, address_wire + body, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, want):
            self.refused += 1
            return None
        self.accepted += 1
        return body


def card_for(address: str, config: SimMeterConfig) -> EsamCard | None:
    """The meter's ESAM when its config requires one."""
    if not config.require_esam:
        return None
    return EsamCard(address, bytes.fromhex(config.esam_key))
