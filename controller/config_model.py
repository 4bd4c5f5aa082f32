"""The one base of every config table, and secrets kept out of the config file.

Every section (``[service]``, ``[[buses]]``, ``[loads]``, ``[line]``,
``[warehouse]``, ``[opcua]`` ...) is a :class:`ConfigModel`: unknown keys are
refused, and numbers and booleans are strict, so ``port = "9108"`` is an error
naming the field and the type wanted, in every table alike; a quoted number that
is silently accepted in one table and refused in the next is worse than either.

Types that TOML can only spell as text (paths, decimal money, enumerations)
opt out per field with ``Field(strict=False)`` (see :data:`PathStr`).

A :data:`Secret` field (a meter password, an ESAM option key) takes its value
from the file as text, or from outside it::

    password = { env = "GRIDCTL_BUS1_PW" }      # an environment variable
    password = { file = "/etc/gridctl/bus1.pw" }  # a file (trailing newline dropped)

A variable that is not set or a file that cannot be read is an error naming the
field, at load time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo


class ConfigModel(BaseModel):
    # strict: "10" is not 10 and 1 is not true in a config file
    model_config = ConfigDict(extra="forbid", strict=True)


# TOML has no path type: accept strings (strict mode would demand Path instances).
PathStr = Annotated[Path, Field(strict=False)]

_SECRET_FORMS = '"text", { env = "VARIABLE" } or { file = "PATH" }'


def resolve_secret(value: Any, field: str) -> Any:
    """``{env = NAME}`` / ``{file = PATH}`` → the text they hold; anything else as is.

    ValueError naming ``field`` and the variable or file when it cannot be read."""
    if not isinstance(value, dict):
        return value
    if set(value) == {"env"} and isinstance(value["env"], str) and value["env"]:
        name = value["env"]
        text = os.environ.get(name)
        if text is None:
            raise ValueError(f"{field}: environment variable {name} is not set")
        return text
    if set(value) == {"file"} and isinstance(value["file"], str) and value["file"]:
        path = value["file"]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{field}: cannot read file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{field}: file {path} is not UTF-8 text") from None
        return text.rstrip("\r\n")
    raise ValueError(f"{field} must be {_SECRET_FORMS}, got {value!r}")


def _secret(value: Any, info: ValidationInfo) -> Any:
    return resolve_secret(value, info.field_name or "value")


# A text value that may come from an environment variable or a file instead.
Secret = Annotated[str, BeforeValidator(_secret)]


def is_secret_reference(value: Any) -> bool:
    """True for a table that names where a secret is (``{env = ...}`` or ``{file = ...}``)."""
    return isinstance(value, dict) and set(value) in ({"env"}, {"file"})
