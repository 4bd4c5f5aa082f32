"""`gridctl certs`: the OPC UA server's client certificate lists.

``list`` shows the trusted and rejected certificates, ``trust`` moves a
rejected one to the trusted list, ``reject`` the other way, ``show`` prints one.
The lists are ``<service.state_dir>/opcua/pki/{trusted,rejected}`` of the
config given; a running server rereads them at its next connection attempt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from opcua_server.pki import CertificateInfo, CertificateStore, UnknownCertificate

_DATE = "%Y-%m-%d %H:%M:%SZ"


def pki_dir_of(config_path: Path) -> Path:
    """The server's PKI directory for a config file (raises ConfigError)."""
    from controller.config import load_config

    cfg = load_config(config_path)
    return Path(cfg.service.state_dir) / "opcua" / "pki"


def add_parser(sub: Any) -> None:
    from controller.config import DEFAULT_CONFIG

    p = sub.add_parser("certs", help="list, trust or reject OPC UA client certificates")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config naming the state directory (default {DEFAULT_CONFIG})",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("list", "trusted and rejected certificates"),
        ("trust", "move a rejected certificate to the trusted list"),
        ("reject", "move a trusted certificate to the rejected list"),
        ("show", "details of one certificate"),
    ):
        a = actions.add_parser(name, help=text)
        if name != "list":
            a.add_argument("thumbprint", help="SHA-1 thumbprint, 40 hex digits (from `certs list`)")
        # also after the action (`certs list --config site.toml`); SUPPRESS keeps the parent's
        a.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="as above")
    p.set_defaults(func=_certs)


def _certs(args: Any) -> int:
    from controller.config import ConfigError

    try:
        store = CertificateStore(pki_dir_of(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            print(render_list(store))
        elif args.action == "show":
            info = store.find(args.thumbprint)
            state = "trusted" if info.path.parent == store.trusted_dir else "rejected"
            print(render_details(info, state))
        elif args.action == "trust":
            info = store.trust(args.thumbprint)
            print(f"trusted {info.thumbprint} {info.subject} ({info.path})")
        elif args.action == "reject":
            info = store.reject(args.thumbprint)
            print(f"rejected {info.thumbprint} {info.subject} ({info.path})")
    except UnknownCertificate as exc:
        print(f"gridctl certs {args.action}: {exc.args[0]}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gridctl certs {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def render_list(store: CertificateStore) -> str:
    lines = []
    for state, infos in (("trusted", store.trusted()), ("rejected", store.rejected())):
        lines.append(f"{state} ({len(infos)}) in {store.root / state}:")
        for i in infos:
            lines.append(
                f"  {i.thumbprint}  {i.subject}  uri={i.application_uri or '-'}  "
                f"valid {i.not_before:{_DATE}} .. {i.not_after:{_DATE}}"
            )
    return "\n".join(lines)


def render_details(info: CertificateInfo, state: str) -> str:
    return "\n".join(
        (
            f"thumbprint:      {info.thumbprint}",
            f"state:           {state}",
            f"subject:         {info.subject}",
            f"issuer:          {info.issuer}",
            f"application uri: {info.application_uri or '-'}",
            f"not before:      {info.not_before:{_DATE}}",
            f"not after:       {info.not_after:{_DATE}}",
            f"serial number:   {info.serial_number:x}",
            f"file:            {info.path}",
        )
    )
