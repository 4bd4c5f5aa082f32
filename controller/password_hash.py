"""Password hashes in config files: ``scrypt$N$r$p$salt$hash`` (salt and hash base64).

The format of the OPC UA users (``python -m opcua_server.users hash`` prints
one); it lives in the base layer so that every endpoint (OPC UA, metrics)
checks a password the same way without importing another publisher.
Verifying costs one scrypt (2**14 × 8 × 128 B = 16 MiB, 30–60 ms): never on
the event loop that runs the cyclic tasks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# scrypt needs 128·N·r bytes; a hash asking for more than this is refused, not computed.
MAXMEM = 64 * 1024 * 1024
PATTERN = r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"
_FORMAT = re.compile(PATTERN)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    if not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def is_password_hash(encoded: str) -> bool:
    """True when ``encoded`` has the hash format (it says nothing about the password)."""
    return _FORMAT.fullmatch(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
