"""`--tls` options of the SCU commands: DICOM over TLS (PS3.15 B.9, BCP 195) as a client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ssl import SSLContext

_PEM = {"dir_okay": False, "show_default": False, "rich_help_panel": "TLS (PS3.15 B.9)"}

TlsOpt = Annotated[
    bool,
    typer.Option(
        "--tls",
        help="Use DICOM over TLS: TLS 1.2 or 1.3 with the BCP 195 cipher suites; the peer's certificate "
        "is verified (--tls-ca, else the system's CAs) and must name the host called. "
        "Implied by any other --tls-* option.",
        rich_help_panel="TLS (PS3.15 B.9)",
    ),
]
TlsCertOpt = Annotated[
    Path | None,
    typer.Option("--tls-cert", help="PEM certificate (chain) to present to the peer (mutual TLS).", **_PEM),
]
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-key",
        help="PEM private key of --tls-cert, unencrypted (default: in the --tls-cert file).",
        **_PEM,
    ),
]
TlsCaOpt = Annotated[
    Path | None,
    typer.Option("--tls-ca", help="PEM CA certificates the peer's certificate must chain to.", **_PEM),
]
TlsNoVerifyOpt = Annotated[
    bool,
    typer.Option(
        "--tls-no-verify",
        help="Accept any peer certificate, unchecked (a throw-away test peer only: no authentication).",
        rich_help_panel="TLS (PS3.15 B.9)",
    ),
]


def client_tls(
    tls: bool, cert: Path | None, key: Path | None, ca: Path | None, no_verify: bool
) -> SSLContext | None:
    """The client context the options ask for, or None (plain DICOM); raises TlsConfigError."""
    if not (tls or cert or key or ca or no_verify):
        return None
    from pacsnode.security.tls import client_context

    return client_context(ca=ca, cert=cert, key=key, verify=not no_verify)
