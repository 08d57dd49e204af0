"""Node settings (PS3.15 Annex H's Device / Network AE / Connection), from TOML, environment and flags."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "PACSNODE_"


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names the key and where it came from."""


def _check_ae_title(value: str) -> str:
    # PS3.5 Table 6.2-1, AE: 1-16 characters, no backslash, no control characters;
    # leading and trailing spaces are not significant.
    title = value.strip(" ")
    if not 0 < len(title) <= 16:
        raise ValueError("an AE title has 1 to 16 characters")
    if any(not (" " <= c <= "~") or c == "\\" for c in title):
        raise ValueError("an AE title is printable ASCII without backslash")
    return title


SERVICES = ("echo", "store", "find", "move", "get", "worklist", "mpps", "commit")
Service = Literal["echo", "store", "find", "move", "get", "worklist", "mpps", "commit"]
Role = Literal["admin", "read", "write"]


def _all_services() -> list[Service]:
    return ["echo", "store", "find", "move", "get", "worklist", "mpps", "commit"]


def _read_role() -> list[Role]:
    return ["read"]


def _all_roles() -> list[Role]:
    return ["admin", "read", "write"]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class NodeSettings(BaseModel):
    """The ``[node]`` table: one Device with one Network AE on one DICOM and one HTTP port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Path("./pacsnode-data")
    aet: str = "PACSNODE"
    host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    http_port: int = Field(default=8042, ge=0, le=65535)
    # false: no plain (unencrypted) DICOM listener, only tls_port.
    plain_dicom: bool = True
    # Calling AE titles without a [peers.X] table: accepted or rejected (A-ASSOCIATE-RJ,
    # "calling AE title not recognised"). None: accepted only while the node listens on
    # loopback alone (PS3.15 B.1: the AE title is no credential).
    accept_unknown_peers: bool | None = None
    # PS3.15 B.9 (BCP 195) DICOM over TLS: a second listener (0 = any free port).
    tls_port: int | None = Field(default=None, ge=0, le=65535)
    tls_cert: Path | None = None  # PEM: our certificate (chain), for DICOM and HTTPS
    tls_key: Path | None = None  # PEM: its private key
    tls_ca: Path | None = None  # PEM: the CAs whose certificates peers must present
    tls_require_client_cert: bool = True  # mutual TLS: a peer without a trusted certificate is refused
    # Also require the peer's certificate to name its calling AE title or its host (SAN or CN).
    tls_check_peer_name: bool = False

    def accepts_unknown_peers(self) -> bool:
        """``accept_unknown_peers``, its default resolved from where the node listens."""
        if self.accept_unknown_peers is not None:
            return self.accept_unknown_peers
        return self.host in LOOPBACK_HOSTS

    @model_validator(mode="after")
    def _tls_files(self) -> NodeSettings:
        if self.tls_port is not None and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("[node] tls_port needs tls_cert and tls_key")
        if self.tls_port is not None and self.tls_require_client_cert and self.tls_ca is None:
            raise ValueError("[node] tls_require_client_cert needs tls_ca (the CAs of the peers)")
        # DICOM over TLS only, on one port: plain_dicom = false and tls_port = dicom_port.
        if not self.plain_dicom and self.tls_port is None:
            raise ValueError("[node] plain_dicom = false needs tls_port (else nothing listens for DICOM)")
        if self.plain_dicom and self.tls_port and self.tls_port == self.dicom_port:
            raise ValueError(
                "[node] tls_port is dicom_port: set plain_dicom = false to serve only TLS on that port"
            )
        return self

    # Fix (tests/net): validated on the field, so that an error names [node] aet and
    # where it came from; as a validator of Settings.node it was reported as ": ...".
    @field_validator("aet")
    @classmethod
    def _aet(cls, value: str) -> str:
        return _check_ae_title(value)


class NetworkSettings(BaseModel):
    """The ``[network]`` table: association policy and timers (PS3.8 9.1.5 ARTIM and friends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_associations: int = Field(default=64, ge=1)
    max_pdu_length: int = Field(default=262_144, ge=4096, le=0xFFFFFFFF)
    artim_timeout: float = Field(default=30.0, gt=0)
    idle_timeout: float = Field(default=600.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    shutdown_timeout: float = Field(default=10.0, ge=0)
    require_called_aet: bool = False
    allowed_calling_aets: list[str] | None = None
    transfer_syntax_preference: list[str] = Field(default_factory=list)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _titles(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_ae_title(v) for v in value]


class StorageSettings(BaseModel):
    """The ``[storage]`` table: the archive's index, blobs and ingest policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # SQLAlchemy URL of the index; empty means SQLite in the data folder.
    index_url: str = ""
    # What to do with a different object under an existing SOP Instance UID.
    duplicate_policy: Literal["reject", "keep-first", "replace"] = "reject"
    # Extra (private) Storage SOP class UIDs to accept besides the standard ones.
    private_sop_classes: list[str] = Field(default_factory=list)
    # "syncfs": one file-system sync per group of instances (Linux); "fsync": one per file.
    sync: Literal["syncfs", "fsync"] = "syncfs"
    max_batch: int = Field(default=256, ge=1)
    # Seconds an instance may wait for its group commit before the store fails (A700):
    # an index that stops answering must not leave the sender without a response.
    commit_timeout: float = Field(default=30.0, gt=0)
    # Seconds a group commit waits for the next small instance of each association of the
    # previous group, so that concurrent associations share one sync (0: never wait).
    group_wait: float = Field(default=0.002, ge=0, le=1.0)
    # Write files of 128 KiB or more around the page cache (O_DIRECT, Linux): far less kernel
    # time per file on some hosts, more on others; "auto" times both ways at start-up and
    # keeps the faster; false keeps them in the page cache for a reader that follows at once.
    direct_writes: Literal["auto"] | bool = "auto"


class PeerSettings(BaseModel):
    """One ``[peers.AETITLE]`` table: a remote Application Entity, what it may do and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # An address or host name, or a network such as "10.0.0.0/24" (then the AE is only
    # accepted from there, never called: it has no single address).
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)  # where it listens (C-MOVE, reports)
    tls: bool = False  # associations with it, both ways, use TLS (PS3.15 B.9)
    # The services it may use as SCU with this node (PS3.15 B.1 access control).
    allow: list[Service] = Field(default_factory=_all_services)

    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) to call it on, or None when it has no port or is a network."""
        if self.port is None or "/" in self.host:
            return None
        return self.host, self.port


class QuerySettings(BaseModel):
    """The ``[query]`` table: C-FIND (and later QIDO-RS) matching options (PS3.4 C.2.2.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # PS3.4 C.2.2.2.1: PN matching may be insensitive to case (and accents); Orthanc's default too.
    case_insensitive_names: bool = True
    # At most this many matches per C-FIND (0: no limit); the rest are not sent (status stays Success).
    max_results: int = Field(default=0, ge=0)
    # C-MOVE: seconds to connect to a destination and for each of its answers.
    move_timeout: float = Field(default=30.0, gt=0)


class MppsSettings(BaseModel):
    """The ``[mpps]`` table: what the node does with the performed procedure steps it receives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # AE titles of [peers.X] to which each accepted N-CREATE and N-SET is forwarded, in order.
    forward_to: list[str] = Field(default_factory=list)

    @field_validator("forward_to")
    @classmethod
    def _titles(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]


class IanSettings(BaseModel):
    """The ``[ian]`` table: when a study is stable, and who gets its Instance Availability Notification."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Seconds without a new instance after which a study is stable (and notified).
    stable_after: float = Field(default=60.0, gt=0)
    # AE titles of [peers.X] that receive an N-CREATE (PS3.4 Annex R) for each stable study, in order.
    subscribers: list[str] = Field(default_factory=list)
    # A notification that could not be delivered is tried again after this many seconds, the wait
    # doubling each time, up to max_attempts tries in all.
    retry_interval: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    # Seconds to connect, negotiate and get the answer of each N-CREATE.
    timeout: float = Field(default=30.0, gt=0)

    @field_validator("subscribers")
    @classmethod
    def _titles(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]


class CommitmentSettings(BaseModel):
    """The ``[commitment]`` table: how Storage Commitment reports reach the requester (PS3.4 J.3.3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Report on the requesting association while it is open (else always on a new one).
    same_association: bool = True
    # Seconds to connect, negotiate and get each answer when sending a report.
    timeout: float = Field(default=30.0, gt=0)
    # A report on a new association is tried this many times, the wait doubling from retry_interval.
    attempts: int = Field(default=3, ge=1)
    retry_interval: float = Field(default=5.0, ge=0)


class WebSettings(BaseModel):
    """The ``[web]`` table: the HTTP server of DICOMweb (PS3.18) and the admin API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Serve HTTP on [node] http_port at all.
    enabled: bool = True
    # PS3.18 8.2: the path of the DICOMweb service root.
    base_path: str = "/dicom-web"
    # Origins a browser may call from (CORS); ["*"] allows any.
    cors_origins: list[str] = Field(default_factory=list)
    # Compress responses of at least this many bytes when the client accepts gzip (0: never).
    gzip_min_size: int = Field(default=1024, ge=0)
    # STOW-RS: a request body over this many bytes is refused with 413.
    max_body: int = Field(default=4 << 30, ge=1)
    # QIDO-RS: at most this many matches per request (the Warning header says when cut).
    max_results: int = Field(default=1000, ge=1)
    # The OHIF viewer's prebuilt dist/ folder; empty: <data>/viewer when it exists.
    viewer: Path | None = None
    # HTTPS (PS3.18 8.1, BCP 195) on http_port with [node] tls_cert and tls_key, instead of HTTP.
    tls: bool = False
    # HTTPS clients must present a certificate issued by [node] tls_ca (else none is asked for).
    tls_require_client_cert: bool = False

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/" or any(c in value for c in "?#% "):
            raise ValueError("a path such as /dicom-web")
        return value


class Hl7Settings(BaseModel):
    """The ``[hl7]`` table: HL7 v2 orders and patient updates over MLLP (docs/hl7.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Listen for MLLP connections at all.
    enabled: bool = False
    # Listen address; empty: [node] host.
    host: str = ""
    # 2575: the port IANA registered for HL7 over MLLP; 0 = any free port.
    port: int = Field(default=2575, ge=0, le=65535)
    # A message (MLLP block) over this many bytes gets AR and the connection is closed.
    max_message: int = Field(default=1 << 20, ge=1024)
    # ACK MSH-3 / MSH-4; empty: what the sender put in MSH-5 / MSH-6 (else our AE title).
    application: str = ""
    facility: str = ""
    # MSH-11 processing ID accepted (HL7 Table 0103: P production, T training, D debugging).
    processing_id: Literal["P", "T", "D"] = "P"
    # A connection that sends nothing for this long is closed.
    idle_timeout: float = Field(default=600.0, gt=0)


class UserSettings(BaseModel):
    """One ``[auth.users.NAME]`` table: an HTTP (and DICOM User Identity) user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `pacsnode auth hash-password` output (scrypt); never the password itself.
    password_hash: str
    roles: list[Role] = Field(default_factory=_read_role)

    @field_validator("password_hash")
    @classmethod
    def _scrypt(cls, value: str) -> str:
        if not re.fullmatch(r"scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", value):
            raise ValueError("not a password hash: paste the output of `pacsnode auth hash-password`")
        return value


class TokenSettings(BaseModel):
    """One ``[auth.tokens.NAME]`` table: an API token (sent as ``Authorization: Bearer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # SHA-256 (hex) of the token (`pacsnode auth new-token`): the file never holds the token itself.
    token_hash: str
    roles: list[Role] = Field(default_factory=_read_role)

    @field_validator("token_hash")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("not a SHA-256 in hex: paste the token_hash of `pacsnode auth new-token`")
        return value.lower()


class AuthSettings(BaseModel):
    """The ``[auth]`` table: who may use the HTTP API and DICOMweb, and DICOM User Identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Requests from loopback without credentials are allowed, with these roles ([] = none).
    loopback_roles: list[Role] = Field(default_factory=_all_roles)
    users: dict[str, UserSettings] = Field(default_factory=dict)
    tokens: dict[str, TokenSettings] = Field(default_factory=dict)
    # OpenID Connect bearer tokens (JWT): the issuer, the audience, and its keys (a JWKS URL or file).
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    oidc_roles_claim: str = "roles"
    # PS3.7 D.3.3.7 User Identity Negotiation on DICOM associations: ignored ("off"),
    # checked when sent ("optional"), or needed from every peer ("required").
    dimse_user_identity: Literal["off", "optional", "required"] = "off"

    @model_validator(mode="after")
    def _oidc_keys(self) -> AuthSettings:
        if self.oidc_issuer and not self.oidc_jwks:
            raise ValueError("[auth] oidc_issuer needs oidc_jwks (the issuer's JWKS URL or file)")
        return self


class AuditSettings(BaseModel):
    """The ``[audit]`` table: the PS3.15 A.5 audit trail, kept locally and sent by syslog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # The collector (RFC 5424 syslog); empty: messages are only kept locally.
    syslog_host: str = ""
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_transport: Literal["udp", "tcp", "tls"] = "tls"
    syslog_ca: Path | None = None  # PEM CAs of the collector (tls)
    syslog_cert: Path | None = None  # PEM client certificate and key, when the collector asks
    syslog_key: Path | None = None
    # AuditSourceIdentification: AuditSourceID (default: our AE title) and AuditEnterpriseSiteID.
    source_id: str = ""
    enterprise_site_id: str = ""
    # Days the local copy of each message is kept (0: for ever).
    keep_days: int = Field(default=0, ge=0)


class Settings(BaseModel):
    """All settings of one node; built once, immutable, passed explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSettings = Field(default_factory=NodeSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    mpps: MppsSettings = Field(default_factory=MppsSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    commitment: CommitmentSettings = Field(default_factory=CommitmentSettings)
    ian: IanSettings = Field(default_factory=IanSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    # Remote AEs keyed by AE title: ``[peers.STORESCP]`` with host and port.
    peers: dict[str, PeerSettings] = Field(default_factory=dict)

    @field_validator("peers")
    @classmethod
    def _peer_titles(cls, value: dict[str, PeerSettings]) -> dict[str, PeerSettings]:
        return {_check_ae_title(title): peer for title, peer in value.items()}

    @model_validator(mode="after")
    def _https_files(self) -> Settings:
        if self.web.tls and (self.node.tls_cert is None or self.node.tls_key is None):
            raise ValueError("[web] tls needs [node] tls_cert and tls_key")
        if self.web.tls and self.web.tls_require_client_cert and self.node.tls_ca is None:
            raise ValueError("[web] tls_require_client_cert needs [node] tls_ca")
        return self

    @model_validator(mode="after")
    def _subscribers_are_peers(self) -> Settings:
        unknown = [title for title in self.ian.subscribers if title not in self.peers]
        if unknown:
            raise ValueError(
                f"[ian] subscribers: {', '.join(unknown)} not in [peers]; add a [peers.{unknown[0]}] "
                "table with its host and port"
            )
        return self

    def index_url(self) -> str:
        """The index database URL: the configured one, or SQLite in the data folder."""
        return self.storage.index_url or f"sqlite:///{(self.node.data / 'index.sqlite').resolve()}"


# Environment variables of the command-line contract -> (table, key).
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "PACSNODE_DATA": ("node", "data"),
    "PACSNODE_AET": ("node", "aet"),
    "PACSNODE_HOST": ("node", "host"),
    "PACSNODE_DICOM_PORT": ("node", "dicom_port"),
    "PACSNODE_HTTP_PORT": ("node", "http_port"),
    "PACSNODE_MAX_ASSOCIATIONS": ("network", "max_associations"),
    "PACSNODE_INDEX_URL": ("storage", "index_url"),
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge file < environment < flags (``overrides``) and validate; raise ConfigError naming the key."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get("PACSNODE_CONFIG"):
        config_file = Path(env["PACSNODE_CONFIG"])
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    if config_file is not None:
        for table, values in _read_toml(config_file).items():
            if not isinstance(values, dict):
                raise ConfigError(f"{config_file}: '{table}' must be a table like [{table}]")
            merged.setdefault(table, {}).update(values)
            for key in values:
                origin[(table, key)] = f"{config_file} [{table}] {key}"
    for var, (table, key) in ENVIRONMENT.items():
        if var in env:
            merged.setdefault(table, {})[key] = env[var]
            origin[(table, key)] = f"environment variable {var}"
    for table, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                merged.setdefault(table, {})[key] = value
                origin[(table, key)] = f"option --{key.replace('_', '-')}"
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if not loc:  # a rule across tables: its message names the keys
                problems.append(str(err.get("ctx", {}).get("error", err["msg"])))
                continue
            table = loc[0] if loc else "?"
            key = loc[1] if len(loc) > 1 else ""
            where = origin.get((table, key), f"[{table}] {key}".strip())
            if len(loc) > 2:
                # A nested table such as [peers.STORESCP]: name the key inside it too.
                where = f"{where} {'.'.join(loc[2:])}"
            if err["type"] == "extra_forbidden":
                where = origin.get((table, key), f"[{table}] {key}") if key else f"table [{table}]"
                if len(loc) > 2:
                    where = f"{where} {'.'.join(loc[2:])}"
                problems.append(f"{where}: unknown setting")
            else:
                problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
