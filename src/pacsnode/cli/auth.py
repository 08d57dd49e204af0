"""`pacsnode auth`: the password hashes and API tokens of the [auth] table (PS3.15 B.1 access control)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pacsnode.config.settings import Role

auth_app = typer.Typer(
    help="Credentials for \\[auth]: password hashes for users, API tokens (HTTP and DICOM User Identity).",
    no_args_is_help=True,
)

RolesOpt = Annotated[
    list[str] | None,
    typer.Option("--role", "-r", help="A role of the printed entry: admin, read or write (repeat it)."),
]


def _roles(values: list[str] | None) -> list[Role]:
    roles: list[Role] = []
    for value in values or ["read"]:
        if value not in ("admin", "read", "write"):
            raise typer.BadParameter(f"{value!r}: a role is admin, read or write", param_hint="--role")
        if value not in roles:
            roles.append(value)  # type: ignore[arg-type]  # checked just above
    return roles


def _toml_list(roles: list[Role]) -> str:
    return "[" + ", ".join(f'"{r}"' for r in roles) + "]"


def _read_password() -> str:
    if sys.stdin.isatty():
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        # A pipe or a file: its first line, without the line ending.
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        typer.echo("error: empty password", err=True)
        raise typer.Exit(1)
    return password


@auth_app.command("hash-password")
def hash_password_command(
    name: Annotated[
        str, typer.Option("--name", "-n", help="Print a whole \\[auth.users.NAME] table for this user.")
    ] = "",
    role: RolesOpt = None,
) -> None:
    """Hash a password (asked twice, or the first line of stdin) for \\[auth.users.NAME] password_hash."""
    from pacsnode.security.credentials import hash_password  # PyJWT and cryptography: only when used

    roles = _roles(role)
    encoded = hash_password(_read_password())
    if not name:
        typer.echo(encoded)
        return
    typer.echo(f'[auth.users.{name}]\npassword_hash = "{encoded}"\nroles = {_toml_list(roles)}')


@auth_app.command("new-token")
def new_token_command(
    name: Annotated[str, typer.Option("--name", "-n", help="Its name in \\[auth.tokens.NAME].")] = "client",
    role: RolesOpt = None,
) -> None:
    """Make a random API token: print it (for the client) and its \\[auth.tokens.NAME] table (for us)."""
    from pacsnode.security.credentials import new_token, token_hash

    roles = _roles(role)
    token = new_token()
    typer.echo(token)
    typer.echo("\n# the client's token is the line above (shown once); paste this into the node's config:")
    typer.echo(f'[auth.tokens.{name}]\ntoken_hash = "{token_hash(token)}"\nroles = {_toml_list(roles)}')
