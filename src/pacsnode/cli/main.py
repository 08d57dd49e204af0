"""The `pacsnode` command: serve, echo, store, import, find, move, get, conformance (exit 0, 1, 2: usage)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from pacsnode import __version__
from pacsnode.cli.tls import TlsCaOpt, TlsCertOpt, TlsKeyOpt, TlsNoVerifyOpt, TlsOpt, client_tls
from pacsnode.config.logsafe import install as install_logsafe
from pacsnode.config.settings import ConfigError, Settings, load_settings
from pacsnode.net.loop import run_loop

if TYPE_CHECKING:
    from ssl import SSLContext

    from pydicom.dataset import Dataset

    from pacsnode.cli.qr import QROptions

app = typer.Typer(
    name="pacsnode",
    help="pacsnode: a DICOM node (archive, DIMSE and DICOMweb services, tools).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)
# The AE titles of a DICOM client command (echo, store, mpps, commit), as DCMTK spells them.
AetOpt = Annotated[str, typer.Option("--aet", "-aet", help="Our (calling) AE title.")]
AecOpt = Annotated[str, typer.Option("--aec", "-aec", help="The peer's (called) AE title.")]


def _setup_logging(verbose: int, *, server: bool = False) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    if server:
        # A server logs a line per association: a plain formatter costs a few
        # microseconds where Rich's rendering cost ~0.5 ms (bench/echo).
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
            force=True,
        )
        # Alembic narrates every plug-in it loads at INFO: keep that for -v.
        logging.getLogger("alembic").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
        install_logsafe()  # a peer's AE title, UID or URL escaped and cut: one record, one line
        return
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    install_logsafe()


def _fail(message: str) -> typer.Exit:
    # Fix (tests/cli): escape the message, or Rich took "[node]" in config errors for
    # markup and dropped it; soft_wrap keeps each problem on one line in logs.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _settings(config: Path | None, **node: object) -> Settings:
    try:
        return load_settings(config, {"node": node})
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _tls(
    tls: bool, cert: Path | None, key: Path | None, ca: Path | None, no_verify: bool
) -> SSLContext | None:
    """The client TLS context of the --tls options (None: plain DICOM); exit 1 naming a bad file."""
    from pacsnode.security.tls import TlsConfigError

    try:
        return client_tls(tls, cert, key, ca, no_verify)
    except TlsConfigError as exc:
        raise _fail(str(exc)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pacsnode {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """pacsnode: a DICOM node (archive, DIMSE and DICOMweb services, tools)."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (env: PACSNODE_CONFIG)."),
]


ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Write one tab-separated line per file (path, result, status, ...)."),
]
FilesVerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="List every file (-vv: debug log).")
]


@app.command()
def serve(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Data folder (env PACSNODE_DATA; default ./pacsnode-data).")
    ] = None,
    aet: Annotated[
        str | None, typer.Option(help="Our AE title (env PACSNODE_AET; default PACSNODE).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on (env PACSNODE_HOST; default 127.0.0.1)."),
    ] = None,
    # Fix (tests/cli): min/max make an out-of-range port flag bad usage (exit 2), as it is
    # for `pacsnode echo`; it used to fail later, in settings validation, with exit 1.
    dicom_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="DICOM port (env PACSNODE_DICOM_PORT; default 11112)."),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="HTTP port (env PACSNODE_HTTP_PORT; default 8042).")
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Debug logging (default: one line per event).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")] = False,
) -> None:
    """Run the node: answer DICOM associations until interrupted (Ctrl-C drains and stops)."""
    from pacsnode.archive.folder_lock import DataFolderInUse
    from pacsnode.archive.ownership import IndexOfAnotherFolder
    from pacsnode.net.node import Node
    from pacsnode.web.server import HttpServer

    _setup_logging(0 if quiet else verbose + 1, server=True)
    settings = _settings(config, data=data, aet=aet, host=host, dicom_port=dicom_port, http_port=http_port)
    from pacsnode.security.tls import TlsConfigError
    from pacsnode.web.viewer import ViewerError

    try:
        node = Node(settings)  # TLS files are read here: an error names the file
    except TlsConfigError as exc:
        raise _fail(f"TLS: {exc}") from None
    if settings.web.enabled:
        try:
            node.companions.append(
                HttpServer(settings, node.archive, audit=node.audit, authenticator=node.authenticator)
            )
        except (ViewerError, TlsConfigError) as exc:
            raise _fail(str(exc)) from None
    if settings.hl7.enabled:
        from pacsnode.hl7.server import Hl7Server

        node.companions.append(Hl7Server(settings, node.archive, audit=node.audit))
    try:
        run_loop(node.run_forever())
    except (DataFolderInUse, IndexOfAnotherFolder) as exc:  # another process's folder, or index
        raise _fail(str(exc)) from None
    except OSError as exc:
        where = exc.filename or f"{settings.node.host}:{settings.node.dicom_port}"
        raise _fail(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass


@app.command()
def echo(
    host: Annotated[str, typer.Argument(help="Peer host name or address.")],
    port: Annotated[int, typer.Argument(help="Peer TCP port.", min=1, max=65535)],
    aet: AetOpt = "PACSNODE",
    aec: AecOpt = "ANY-SCP",
    repeat: Annotated[int, typer.Option("--repeat", "-r", min=1, help="Send this many C-ECHO requests.")] = 1,
    associations: Annotated[
        int,
        typer.Option("--associations", "-n", min=1, help="Open this many associations one after the other."),
    ] = 1,
    timeout: Annotated[
        float, typer.Option("--timeout", "-to", min=0.001, help="TCP connect timeout, seconds.")
    ] = 30.0,
    acse_timeout: Annotated[
        float, typer.Option("--acse-timeout", "-ta", min=0.001, help="Association timeout, seconds.")
    ] = 30.0,
    dimse_timeout: Annotated[
        float | None, typer.Option("--dimse-timeout", "-td", min=0.001, help="DIMSE timeout, seconds.")
    ] = None,
    max_pdu: Annotated[
        int, typer.Option("--max-pdu", "-pdu", min=4096, help="Maximum PDU length we receive.")
    ] = 262_144,
    abort: Annotated[bool, typer.Option("--abort", help="End with A-ABORT instead of A-RELEASE.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Say more (-vv: debug).")] = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    """Verify a peer with C-ECHO (PS3.7 9.1.5), like DCMTK's echoscu."""
    from pacsnode.cli.echo import run_echo

    _setup_logging(verbose)
    context = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)
    ok = run_echo(
        host,
        port,
        calling=aet,
        called=aec,
        repeat=repeat,
        associations=associations,
        connect_timeout=timeout,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        max_pdu=max_pdu,
        abort=abort,
        verbose=verbose,
        console=err,
        tls=context,
    )
    raise typer.Exit(0 if ok else 1)


PathsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Files and folders; folders are walked (recursively by default), "
        "a DICOMDIR brings in the files it references.",
        exists=True,
        show_default=False,
    ),
]
RecursiveOpt = Annotated[
    bool,
    typer.Option(
        "--recursive/--no-recursive",
        help="Walk folders recursively (default), or take only the files directly in them.",
    ),
]


@app.command(
    help="Send DICOM files and folders with C-STORE (PS3.4 Annex B), like DCMTK's storescu.\n\n"
    "Folders are walked recursively (--no-recursive: top level only); any file name, with or "
    "without preamble; a DICOMDIR brings in the files it references; non-DICOM files are skipped. "
    "Each SOP class is proposed with the files' own transfer syntaxes (those files go untouched) "
    "and with Explicit/Implicit VR Little Endian, to which a file is converted when the peer "
    "refuses its own.\n\n"
    "Prints a summary per result; exits 1 if any DICOM file failed, was refused or could not be sent."
)
def store(
    host: Annotated[str, typer.Argument(help="Peer host name or address.")],
    port: Annotated[int, typer.Argument(help="Peer TCP port.", min=1, max=65535)],
    paths: PathsArg,
    aet: AetOpt = "PACSNODE",
    aec: AecOpt = "ANY-SCP",
    recursive: RecursiveOpt = True,
    convert: Annotated[
        bool,
        typer.Option(
            "--convert/--no-convert",
            help="When the peer refuses a file's transfer syntax, decompress it to Explicit (or Implicit) "
            "VR Little Endian (default), or count the file as failed.",
        ),
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", "-to", min=0.001, help="TCP connect timeout, seconds.")
    ] = 30.0,
    acse_timeout: Annotated[
        float, typer.Option("--acse-timeout", "-ta", min=0.001, help="Association timeout, seconds.")
    ] = 30.0,
    dimse_timeout: Annotated[
        float | None,
        typer.Option("--dimse-timeout", "-td", min=0.001, help="Wait this long for each C-STORE-RSP."),
    ] = None,
    max_pdu: Annotated[
        int, typer.Option("--max-pdu", "-pdu", min=4096, help="Maximum PDU length we receive.")
    ] = 262_144,
    report: ReportOpt = None,
    verbose: FilesVerboseOpt = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    from pacsnode.cli.store import StoreOptions, run_store

    _setup_logging(max(verbose - 1, 0))
    options = StoreOptions(
        host,
        port,
        calling=aet,
        called=aec,
        connect_timeout=timeout,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        max_pdu=max_pdu,
        convert=convert,
        tls=_tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify),
    )
    try:
        ok = run_store(paths, options, recursive=recursive, verbose=verbose, console=err, report=report)
    except OSError as exc:
        raise _fail(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


@app.command(
    "import",
    help="Load local DICOM files and folders into the node's archive, through the same ingest "
    "pipeline (checks, storage, index) as C-STORE.\n\n"
    "Folders are walked recursively (--no-recursive: top level only); a DICOMDIR brings in the files "
    "it references; non-DICOM files are skipped.\n\n"
    "Prints a summary per result; exits 1 if any DICOM file was refused.",
)
def import_(
    paths: PathsArg,
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Data folder (env PACSNODE_DATA; default ./pacsnode-data).")
    ] = None,
    recursive: RecursiveOpt = True,
    report: ReportOpt = None,
    verbose: FilesVerboseOpt = 0,
) -> None:
    from pacsnode.archive.folder_lock import DataFolderInUse
    from pacsnode.archive.ownership import IndexOfAnotherFolder
    from pacsnode.cli.importer import run_import

    _setup_logging(max(verbose - 1, 0))
    settings = _settings(config, data=data)
    try:
        ok = run_import(paths, settings, recursive=recursive, verbose=verbose, console=err, report=report)
    except (DataFolderInUse, IndexOfAnotherFolder) as exc:  # a node on this folder, another's index
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{exc.filename or settings.node.data}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


# ---------------------------------------------------------------- Query/Retrieve SCU

HostArg = Annotated[str, typer.Argument(help="Peer host name or address.", show_default=False)]
PortArg = Annotated[int, typer.Argument(help="Peer TCP port.", min=1, max=65535, show_default=False)]
QueryFilesArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Query files: DICOM data sets whose attributes form the Identifier (as DCMTK's "
        "findscu/movescu/getscu read them); -k keys are applied over each. One request per file.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
CallingOpt = Annotated[str, typer.Option("--calling-aet", "--aet", "-aet", help="Our (calling) AE title.")]
CalledOpt = Annotated[
    str, typer.Option("--called-aet", "--aec", "-aec", help="The peer's (called) AE title.")
]
PatientRootOpt = Annotated[
    bool, typer.Option("--patient", "-P", help="Use the Patient Root information model (PS3.4 C.6.1).")
]
StudyRootOpt = Annotated[
    bool,
    typer.Option("--study", "-S", help="Use the Study Root information model (PS3.4 C.6.2; the default)."),
]
KeysOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        "-k",
        help="KEY=VALUE to match, or KEY (or KEY=) to return; KEY is a keyword (PatientName), a tag "
        "(0010,0020) or a sequence path (ReferencedStudySequence[0].ReferencedSOPClassUID). "
        "Repeatable. QueryRetrieveLevel defaults to STUDY (-S) or PATIENT (-P).",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", "-to", min=0.001, help="TCP connect timeout, seconds.")
]
AcseTimeoutOpt = Annotated[
    float, typer.Option("--acse-timeout", "-ta", min=0.001, help="Association timeout, seconds.")
]
DimseTimeoutOpt = Annotated[
    float | None,
    typer.Option("--dimse-timeout", "-td", min=0.001, help="Wait this long for each response, seconds."),
]
MaxPduOpt = Annotated[int, typer.Option("--max-pdu", "-pdu", min=4096, help="Maximum PDU length we receive.")]
QRVerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="Say more (-vv: debug log).")]


@app.command(
    help="De-identify DICOM files and folders (PS3.15 Annex E): the Basic Application Level "
    "Confidentiality Profile, plus each --option given (retain-safe-private, retain-uids, "
    "retain-device-identity, retain-institution-identity, retain-patient-characteristics, "
    "retain-full-dates, retain-modified-dates, clean-descriptors, clean-structured-content, "
    "clean-graphics, clean-pixel-data).\n\n"
    "A folder's tree is mirrored under OUT. UIDs, date shifts and pseudonyms come from a key "
    "(--key-file, else deid.key in the data folder, created once): the same key gives the same "
    "output, batch after batch. Objects flagged Burned In Annotation YES that no --pixel-rules "
    "rule cleans are refused.\n\n"
    "Exits 1 if any DICOM file was refused (malformed, or not safe to pass)."
)
def deid(
    source: Annotated[list[Path], typer.Argument(help="Input files or folders, then OUT.", exists=True)],
    target: Annotated[Path, typer.Argument(help="Output file or folder.")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="An option of PS3.15 E.3 (repeatable).")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="Secret key (hex); created if missing.")
    ] = None,
    pseudonyms: Annotated[
        Path | None, typer.Option("--pseudonyms", help="CSV (id,pseudonym) or TOML [patients] table.")
    ] = None,
    pixel_rules: Annotated[
        Path | None, typer.Option("--pixel-rules", help="TOML [[rule]]s of burned-in rectangles.")
    ] = None,
    safe_private: Annotated[
        Path | None, typer.Option("--safe-private", help="TOML [[safe]] private attributes to add.")
    ] = None,
    allow_burned_in: Annotated[
        bool, typer.Option("--allow-burned-in", help="Pass Burned In Annotation YES objects no rule cleans.")
    ] = False,
    config: ConfigOpt = None,
    verbose: FilesVerboseOpt = 0,
) -> None:
    from pacsnode.cli.deid import run_deid
    from pacsnode.deid import DeidConfig, OptionError, parse_options
    from pacsnode.deid.pixels import PixelRuleError, load_rules
    from pacsnode.deid.pseudonyms import PseudonymError, load_table
    from pacsnode.deid.safe_private import SAFE_PRIVATE, SafeListError, load_safe_list
    from pacsnode.deid.uids import KeyFileError, load_or_create_key

    _setup_logging(max(verbose - 1, 0))
    try:
        options = parse_options(option or [])
        key = load_or_create_key(key_file or _settings(config).node.data / "deid.key")
        deid_config = DeidConfig(
            key=key,
            options=options,
            pseudonyms=load_table(pseudonyms) if pseudonyms else {},
            pixel_rules=load_rules(pixel_rules) if pixel_rules else (),
            allow_burned_in=allow_burned_in,
            safe_private=SAFE_PRIVATE | load_safe_list(safe_private) if safe_private else SAFE_PRIVATE,
        )
        summary = run_deid(source, target, deid_config, console=err, verbose=verbose)
    except (OptionError, KeyFileError, PseudonymError, PixelRuleError, SafeListError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(1 if summary.refused else 0)


def _qr_exit(run: Callable[[], bool]) -> NoReturn:
    """Run a find/move/get and exit with its code (130 on Ctrl-C)."""
    try:
        ok = run()
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


def _qr_setup(
    host: str,
    port: int,
    titles: tuple[str, str],
    roots: tuple[bool, bool],
    keys: list[str] | None,
    query_files: list[Path] | None,
    network: tuple[float, float, float | None, int],
    default_keys: bool = False,
) -> tuple[QROptions, list[Dataset]]:
    """Options and Identifiers of find/move/get: (calling, called) titles, (-P, -S), and
    (connect, ACSE, DIMSE timeouts, max PDU)."""
    from pacsnode.cli.qr import QROptions, UsageError, identifiers

    patient, study = roots
    if patient and study:
        raise typer.BadParameter("give -P (patient root) or -S (study root), not both")
    model = "patient" if patient else "study"
    timeout, acse_timeout, dimse_timeout, max_pdu = network
    options = QROptions(
        host, port, titles[0], titles[1], model, timeout, acse_timeout, dimse_timeout, max_pdu
    )
    try:
        requests = identifiers(keys or [], query_files or [], model, default_keys=default_keys)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None
    return options, requests


@app.command(
    help="Query a peer with C-FIND (PS3.4 C.4.1), like DCMTK's findscu.\n\n"
    "Prints the matches as a table, or as one DICOM JSON array (PS3.18 Annex F) with --json. "
    "With no key but the level, asks for the level's usual attributes. "
    "Exits 1 if the association or a C-FIND fails, 2 on bad input.\n\n"
    "Example: pacsnode find -aec ORTHANC 127.0.0.1 4242 -k PatientName='DOE^*' -k StudyDate=20240101-",
)
def find(
    host: HostArg,
    port: PortArg,
    query_files: QueryFilesArg = None,
    aet: CallingOpt = "PACSNODE",
    aec: CalledOpt = "ANY-SCP",
    patient: PatientRootOpt = False,
    study: StudyRootOpt = False,
    keys: KeysOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the matches as DICOM JSON.")] = False,
    cancel_after: Annotated[
        int | None,
        typer.Option("--cancel-after", min=1, help="Send C-CANCEL-RQ after this many matches."),
    ] = None,
    timeout: TimeoutOpt = 30.0,
    acse_timeout: AcseTimeoutOpt = 30.0,
    dimse_timeout: DimseTimeoutOpt = None,
    max_pdu: MaxPduOpt = 262_144,
    verbose: QRVerboseOpt = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    from pacsnode.cli.qr import run_find

    _setup_logging(max(verbose - 1, 0))
    network = (timeout, acse_timeout, dimse_timeout, max_pdu)
    options, requests = _qr_setup(
        host, port, (aet, aec), (patient, study), keys, query_files, network, default_keys=True
    )
    options.tls = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)

    def run() -> bool:
        return run_find(
            options,
            requests,
            as_json=as_json,
            cancel_after=cancel_after,
            out=Console(),
            console=err,
            verbose=verbose,
        )

    _qr_exit(run)


@app.command(
    help="Have a peer send matching instances to a destination AE with C-MOVE (PS3.4 C.4.2), "
    "like DCMTK's movescu.\n\n"
    "The peer must know the destination AE title (its host and port). Shows the sub-operations "
    "(remaining, completed, failed, warning); lists the Failed SOP Instance UIDs. "
    "With --port, this command is the destination too (as movescu --port): it listens there "
    "with our AE title (-aet), which is the default move destination, and writes what it "
    "receives into --od. "
    "Exits 1 unless every C-MOVE succeeded with no failed sub-operation, 2 on bad input.\n\n"
    "Example: pacsnode move -aec ORTHANC -aem STORESCP 127.0.0.1 4242 -k StudyInstanceUID=1.2.3\n\n"
    "Example: pacsnode move -aet ME -aec ORTHANC --port 11113 --od study 127.0.0.1 4242 "
    "-k StudyInstanceUID=1.2.3",
)
def move(
    host: HostArg,
    port: PortArg,
    query_files: QueryFilesArg = None,
    move_destination: Annotated[
        str,
        typer.Option(
            "--move-dest", "-aem", help="AE title the peer sends the instances to.", show_default=False
        ),
    ] = "",
    aet: CallingOpt = "PACSNODE",
    aec: CalledOpt = "ANY-SCP",
    patient: PatientRootOpt = False,
    study: StudyRootOpt = False,
    keys: KeysOpt = None,
    timeout: TimeoutOpt = 30.0,
    acse_timeout: AcseTimeoutOpt = 30.0,
    dimse_timeout: DimseTimeoutOpt = None,
    max_pdu: MaxPduOpt = 262_144,
    store_port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "+P",
            min=1,
            max=65535,
            help="Receive the instances ourselves: listen on this port (all interfaces) as -aet.",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path,
        typer.Option("--od", "--output-dir", "-od", help="With --port: folder to write the instances to."),
    ] = Path("."),
    verbose: QRVerboseOpt = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    from pacsnode.cli.qr import run_move

    _setup_logging(max(verbose - 1, 0))
    if not move_destination:
        if store_port is None:
            raise typer.BadParameter(
                "the move destination is required (or --port to receive as -aet)",
                param_hint="'-aem' / '--move-dest'",
            )
        move_destination = aet  # PS3.4 C.4.2.1.3: the receiver is us
    network = (timeout, acse_timeout, dimse_timeout, max_pdu)
    options, requests = _qr_setup(host, port, (aet, aec), (patient, study), keys, query_files, network)
    options.tls = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)
    if store_port is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(f"cannot create {output_dir}: {exc.strerror or exc}") from None
    _qr_exit(
        lambda: run_move(
            options,
            requests,
            move_destination,
            console=err,
            store_port=store_port,
            output=output_dir,
            verbose=verbose,
        )
    )


@app.command(
    help="Retrieve matching instances over the same association with C-GET (PS3.4 C.4.3), "
    "like DCMTK's getscu.\n\n"
    "Each instance is written as a DICOM file (PS3.10, with File Meta Information) named after its "
    "SOP Instance UID in --od. The common Storage SOP classes are proposed over Explicit and "
    "Implicit VR Little Endian; --accept-ts adds a context per class for a transfer syntax the peer "
    "holds instances in (fewer classes then fit). "
    "Exits 1 unless every C-GET succeeded with no failed sub-operation, 2 on bad input.\n\n"
    "Example: pacsnode get -aec ORTHANC 127.0.0.1 4242 -k StudyInstanceUID=1.2.3 --od study",
)
def get(
    host: HostArg,
    port: PortArg,
    query_files: QueryFilesArg = None,
    output_dir: Annotated[
        Path,
        typer.Option(
            "--od", "--output-dir", "-od", help="Folder to write the instances to (created if needed)."
        ),
    ] = Path("."),
    accept_ts: Annotated[
        list[str] | None,
        typer.Option(
            "--accept-ts",
            help="Also accept instances in this transfer syntax UID (e.g. 1.2.840.10008.1.2.4.70); "
            "repeatable.",
            show_default=False,
        ),
    ] = None,
    aet: CallingOpt = "PACSNODE",
    aec: CalledOpt = "ANY-SCP",
    patient: PatientRootOpt = False,
    study: StudyRootOpt = False,
    keys: KeysOpt = None,
    timeout: TimeoutOpt = 30.0,
    acse_timeout: AcseTimeoutOpt = 30.0,
    dimse_timeout: DimseTimeoutOpt = None,
    max_pdu: MaxPduOpt = 262_144,
    verbose: QRVerboseOpt = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    from pacsnode.cli.qr import run_get
    from pacsnode.data.uids import is_valid_uid

    _setup_logging(max(verbose - 1, 0))
    for ts in accept_ts or []:
        if not is_valid_uid(ts):
            raise typer.BadParameter(f"{ts!r} is not a transfer syntax UID", param_hint="'--accept-ts'")
    network = (timeout, acse_timeout, dimse_timeout, max_pdu)
    options, requests = _qr_setup(host, port, (aet, aec), (patient, study), keys, query_files, network)
    options.tls = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"cannot create {output_dir}: {exc.strerror or exc}") from None
    try:
        ok = run_get(
            options,
            requests,
            output_dir,
            extra_transfer_syntaxes=accept_ts or [],
            console=err,
            verbose=verbose,
        )
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


class Format(StrEnum):
    """Output formats of the conformance statement."""

    markdown = "markdown"
    html = "html"


@app.command()
def conformance(
    config: ConfigOpt = None,
    aet: Annotated[str | None, typer.Option(help="AE title to describe (default: configured).")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.markdown,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the node's DICOM Conformance Statement (PS3.2), generated from what it runs."""
    from pacsnode.services.catalog import default_registry
    from pacsnode.services.conformance import render_conformance
    from pacsnode.web.capabilities import conformance_sections

    settings = _settings(config, aet=aet)
    registry = default_registry(settings, describe_storage=True)
    text = render_conformance(registry, settings, fmt.value, web=conformance_sections(settings))
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write {output}: {exc.strerror}") from None


worklist_app = typer.Typer(
    help="The Modality Worklist of a running node (its REST API): add, list, cancel.",
    no_args_is_help=True,
)
app.add_typer(worklist_app, name="worklist")
UrlOpt = Annotated[
    str, typer.Option("--url", help="The node's HTTP root (env PACSNODE_URL).", envvar="PACSNODE_URL")
]


@worklist_app.command("add")
def worklist_add(
    paths: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="Worklist files (.wl) or DICOM JSON.")
    ],
    url: UrlOpt = "http://127.0.0.1:8042",
) -> None:
    """Schedule worklist items: DICOM files as DCMTK's wlmscpfs reads them, or DICOM JSON."""
    from pacsnode.cli.worklist import WorklistClientError, add

    failed = 0
    for path in paths:
        try:
            ids = add(url, path)
        except (WorklistClientError, OSError) as exc:
            err.print(f"{path}: {exc}", highlight=False)
            failed += 1
            continue
        print(f"{path}: scheduled as {', '.join(str(i) for i in ids)}")
    raise typer.Exit(1 if failed else 0)


@worklist_app.command("list")
def worklist_list(
    url: UrlOpt = "http://127.0.0.1:8042",
    all_items: Annotated[bool, typer.Option("--all", help="Cancelled items too.")] = False,
) -> None:
    """List the scheduled procedure steps."""
    from rich.table import Table

    from pacsnode.cli.worklist import WorklistClientError, listing

    try:
        items = listing(url, include_canceled=all_items)
    except WorklistClientError as exc:
        raise _fail(str(exc)) from None
    columns = (
        "id",
        "status",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepID",
    )
    table = Table(*columns)
    for item in items:
        table.add_row(*(str(item.get(c, "")) for c in columns))
    Console().print(table)


@worklist_app.command("cancel")
def worklist_cancel(
    item_id: Annotated[int, typer.Argument(help="The item's id (pacsnode worklist list).")],
    url: UrlOpt = "http://127.0.0.1:8042",
) -> None:
    """Cancel a scheduled procedure step: it no longer answers worklist queries."""
    from pacsnode.cli.worklist import WorklistClientError, cancel

    try:
        cancel(url, item_id)
    except WorklistClientError as exc:
        raise _fail(str(exc)) from None
    print(f"item {item_id} cancelled")


mpps_app = typer.Typer(
    help="Modality Performed Procedure Step SCU (PS3.4 Annex F): report a procedure to an MPPS SCP.",
    no_args_is_help=True,
)
app.add_typer(mpps_app, name="mpps")
MppsTimeout = Annotated[float, typer.Option("--timeout", help="Seconds for connect, association, response.")]
MppsFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="DICOM file or DICOM JSON.")]


def _mpps(
    operation: str,
    host: str,
    port: int,
    uid: str | None,
    attributes: Path,
    aet: str,
    aec: str,
    timeout: float,
    tls: SSLContext | None = None,
) -> None:
    from pacsnode.cli.mpps import read_attributes, send
    from pacsnode.net.client import AssociationError

    try:
        ds = read_attributes(attributes)
    except Exception as exc:
        raise _fail(f"cannot read {attributes}: {exc}") from None
    try:
        status, text, instance = run_loop(
            send(
                host,
                port,
                operation=operation,
                uid=uid,
                attributes=ds,
                calling=aet,
                called=aec,
                timeout=timeout,
                tls=tls,
            )
        )
    except (AssociationError, OSError, TimeoutError) as exc:
        raise _fail(str(exc)) from None
    print(f"N-{operation.upper()} {instance}: {text}")
    raise typer.Exit(0 if status == 0 else 1)


@mpps_app.command("create")
def mpps_create(
    host: Annotated[str, typer.Argument(help="The MPPS SCP's address.")],
    port: Annotated[int, typer.Argument(min=1, max=65535)],
    attributes: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="DICOM file or DICOM JSON.")
    ],
    uid: Annotated[str | None, typer.Option(help="SOP Instance UID (default: a new one).")] = None,
    aet: AetOpt = "PACSNODE",
    aec: AecOpt = "ANY-SCP",
    timeout: MppsTimeout = 30.0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    """N-CREATE a performed procedure step (status IN PROGRESS); prints its SOP Instance UID."""
    context = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)
    _mpps("create", host, port, uid, attributes, aet, aec, timeout, context)


@mpps_app.command("set")
def mpps_set(
    host: Annotated[str, typer.Argument(help="The MPPS SCP's address.")],
    port: Annotated[int, typer.Argument(min=1, max=65535)],
    uid: Annotated[str, typer.Argument(help="The step's SOP Instance UID.")],
    attributes: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="DICOM file or DICOM JSON.")
    ],
    aet: AetOpt = "PACSNODE",
    aec: AecOpt = "ANY-SCP",
    timeout: MppsTimeout = 30.0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    """N-SET a performed procedure step (e.g. to COMPLETED with its end date and time)."""
    context = _tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify)
    _mpps("set", host, port, uid, attributes, aet, aec, timeout, context)


@app.command(
    help="Ask a Storage Commitment SCP to take responsibility for the instances of these files "
    "(PS3.4 Annex J, Push Model): sends N-ACTION and waits for the N-EVENT-REPORT.\n\n"
    "The report is awaited on the same association, and also on --listen-port when given (the SCP "
    "opens a new association to it, as its configuration for our AE title says). --release closes "
    "the association as soon as the request is accepted, so the report must come on a new one.\n\n"
    "Prints what was committed and what failed (with the Failure Reason); exits 0 when every "
    "instance is committed, 1 otherwise."
)
def commit(
    host: Annotated[str, typer.Argument(help="The Storage Commitment SCP's address.")],
    port: Annotated[int, typer.Argument(help="Its TCP port.", min=1, max=65535)],
    paths: PathsArg,
    aet: AetOpt = "PACSNODE",
    aec: AecOpt = "ANY-SCP",
    recursive: RecursiveOpt = True,
    listen_port: Annotated[
        int | None,
        typer.Option(
            "--listen-port",
            min=0,
            max=65535,
            help="Also accept the report on a new association to this port.",
        ),
    ] = None,
    listen_host: Annotated[str, typer.Option(help="Address for --listen-port.")] = "0.0.0.0",
    release: Annotated[
        bool, typer.Option("--release", help="Release once N-ACTION is accepted (needs --listen-port).")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", "-to", min=0.001, help="Seconds to connect, associate, get N-ACTION-RSP."),
    ] = 30.0,
    wait: Annotated[float, typer.Option("--wait", min=0.001, help="Seconds to wait for the report.")] = 60.0,
    transaction_uid: Annotated[
        str | None, typer.Option("--transaction-uid", help="Transaction UID (default: a new one).")
    ] = None,
    verbose: FilesVerboseOpt = 0,
    tls: TlsOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_no_verify: TlsNoVerifyOpt = False,
) -> None:
    from pacsnode.archive.commitment import Reference
    from pacsnode.cli.commit import CommitFailed, CommitOptions, request_commitment
    from pacsnode.cli.store import collect
    from pacsnode.dimse.status import describe

    _setup_logging(max(verbose - 1, 0))
    if release and listen_port is None:
        raise _fail("--release needs --listen-port: the report must come on a new association")
    files, _others = collect(paths, recursive, err, verb="Not requested")
    references = list(dict.fromkeys(Reference(f.sop_class_uid, f.sop_instance_uid) for f in files))
    if not references:
        raise _fail("no DICOM instance found in the paths given")
    options = CommitOptions(
        host,
        port,
        calling=aet,
        called=aec,
        timeout=timeout,
        wait=wait,
        listen_host=listen_host,
        listen_port=listen_port,
        release_at_once=release,
        tls=_tls(tls, tls_cert, tls_key, tls_ca, tls_no_verify),
    )
    try:
        outcome = run_loop(request_commitment(references, options, transaction_uid))
    except CommitFailed as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    report = outcome.report
    print(
        f"transaction {outcome.transaction_uid}: {len(report.committed)} committed, "
        f"{len(report.failed)} failed (report on the {report.received_on or 'association'})"
    )
    if verbose:
        for ref in report.committed:
            print(f"committed  {ref.sop_instance_uid}")
    for ref, reason in report.failed:
        print(f"failed     {ref.sop_instance_uid}: {describe(reason)}")
    asked = set(references)
    answered = set(report.committed) | {ref for ref, _ in report.failed}
    for ref in sorted(asked - answered, key=lambda r: r.sop_instance_uid):
        print(f"no answer  {ref.sop_instance_uid}")
    raise typer.Exit(0 if not report.failed and asked <= set(report.committed) else 1)


from pacsnode.cli.auth import auth_app  # noqa: E402  # the sub-app is built with the others

app.add_typer(auth_app, name="auth")

viewer_app = typer.Typer(
    help="The OHIF web viewer, served by `pacsnode serve` at / beside its DICOMweb.",
    no_args_is_help=True,
)
app.add_typer(viewer_app, name="viewer")


@viewer_app.command("install")
def viewer_install(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Data folder (env PACSNODE_DATA; default ./pacsnode-data).")
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option(help="Install here (default: \\[web] viewer, else <data>/viewer, as serve looks)."),
    ] = None,
    version: Annotated[str, typer.Option(help="Version of the npm package @ohif/app.")] = "",
) -> None:
    """Download OHIF's prebuilt viewer with npm (about 50 MB) and install it where serve finds it."""
    from pacsnode.web.viewer import OHIF_VERSION, ViewerError, install_viewer

    settings = _settings(config, data=data)
    target = dest or settings.web.viewer or settings.node.data / "viewer"
    with err.status("installing the OHIF viewer", spinner="dots") as status:
        try:
            install_viewer(target, version or OHIF_VERSION, progress=lambda m: status.update(m))
        except ViewerError as exc:
            raise _fail(str(exc)) from None
    err.print(f"OHIF {version or OHIF_VERSION} installed in {target}; `pacsnode serve` serves it at /")


def run() -> None:
    """Console-script entry point (click maps usage errors to exit code 2)."""
    app()
