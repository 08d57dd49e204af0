"""`pacsnode echo`: the Verification SCU (PS3.4 Annex A) from the command line."""

from __future__ import annotations

import time
from ssl import SSLContext

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from pacsnode.dimse.status import describe
from pacsnode.net.client import AssociationError, open_association
from pacsnode.net.loop import run_loop


async def _echo(
    host: str,
    port: int,
    *,
    calling: str,
    called: str,
    repeat: int,
    associations: int,
    connect_timeout: float,
    acse_timeout: float,
    dimse_timeout: float | None,
    max_pdu: int,
    abort: bool,
    verbose: int,
    console: Console,
    tls: SSLContext | None = None,
) -> bool:
    ok = True
    total = repeat * associations
    started = time.perf_counter()
    done = 0
    with Progress(console=console, transient=True, disable=total < 1000) as progress:
        task = progress.add_task("C-ECHO", total=total)
        for _ in range(associations):
            try:
                assoc = await open_association(
                    host,
                    port,
                    called_ae_title=called,
                    calling_ae_title=calling,
                    max_pdu_length=max_pdu,
                    connect_timeout=connect_timeout,
                    acse_timeout=acse_timeout,
                    dimse_timeout=dimse_timeout,
                    ssl=tls,
                )
            except AssociationError as exc:
                # Fix (tests/cli): escaped, the text may hold "[...]" that Rich took for markup.
                console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                return False
            if verbose:
                n = assoc.negotiated
                console.print(
                    f"associated {calling} -> {called} at {host}:{port}; peer implementation "
                    f"{n.peer_implementation_class_uid} {n.peer_implementation_version_name}; "
                    f"peer max PDU {n.peer_max_pdu_length}",
                    highlight=False,
                    markup=False,  # Fix (tests/cli): peer-supplied text, not Rich markup
                )
            try:
                for _ in range(repeat):
                    result = await assoc.echo()
                    done += 1
                    progress.advance(task)
                    if not result.ok:
                        ok = False
                        console.print(
                            f"C-ECHO failed: status 0x{result.status:04X} {describe(result.status)}",
                            highlight=False,
                        )
                    elif verbose:
                        console.print("C-ECHO response: 0x0000 Success", highlight=False)
            except AssociationError as exc:
                console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                assoc.abort()
                return False
            if abort:
                assoc.abort()
                await assoc.protocol.closed
            else:
                await assoc.release(acse_timeout)
    elapsed = time.perf_counter() - started
    if verbose or total > 1:
        console.print(
            f"{done} C-ECHO in {elapsed:.3f} s ({done / elapsed if elapsed else 0:.0f}/s), "
            f"{'all succeeded' if ok else 'some failed'}",
            highlight=False,
        )
    return ok


def run_echo(host: str, port: int, **options: object) -> bool:
    """Run the echoes; True when every C-ECHO answered Success."""
    return run_loop(_echo(host, port, **options))  # type: ignore[arg-type]
