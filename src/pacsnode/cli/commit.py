"""`pacsnode commit`: the Storage Commitment Push Model SCU (PS3.4 Annex J)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from ssl import SSLContext

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.archive.commitment import Reference
from pacsnode.config.settings import NetworkSettings
from pacsnode.dimse.status import describe
from pacsnode.net.client import AssociationError, open_association
from pacsnode.net.server import DicomServer
from pacsnode.services.base import ServiceRegistration, ServiceRegistry, SOPClass
from pacsnode.services.commitment import (
    REQUEST_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_SOP_CLASS,
    UNCOMPRESSED,
    CommitmentReport,
    CommitmentReportReceiver,
)
from pacsnode.ul.negotiation import ProposedContext


class CommitFailed(Exception):
    """The request could not be made or its report did not come (the message says why)."""


@dataclass(frozen=True, slots=True)
class CommitOptions:
    """Where to send the request and how to wait for its report."""

    host: str
    port: int
    calling: str = "PACSNODE"
    called: str = "ANY-SCP"
    timeout: float = 30.0  # connect, association and N-ACTION-RSP
    wait: float = 60.0  # for the report, after the N-ACTION-RSP
    listen_host: str = "0.0.0.0"
    listen_port: int | None = None  # where the SCP may open an association for the report
    release_at_once: bool = False  # release after N-ACTION-RSP: the report must come on a new association
    tls: SSLContext | None = None  # DICOM over TLS (PS3.15 B.9) to the SCP (the listener stays plain)


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """The transaction and its report, and on which association the report came."""

    transaction_uid: str
    report: CommitmentReport
    same_association: bool


def action_information(transaction_uid: str, references: Iterable[Reference]) -> Dataset:
    """The N-ACTION Action Information (PS3.4 Table J.3-1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = DicomSequence()
    for ref in references:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        ds.ReferencedSOPSequence.append(item)
    return ds


def _listener_registry(receiver: CommitmentReportReceiver) -> ServiceRegistry:
    registry = ServiceRegistry()
    registry.register(
        ServiceRegistration(
            name="Storage Commitment Push Model (reports)",
            standard="PS3.4 Annex J",
            sop_classes=(SOPClass(STORAGE_COMMITMENT_SOP_CLASS, "Storage Commitment Push Model"),),
            transfer_syntaxes=UNCOMPRESSED,
            handler=receiver,
            # PS3.4 J.3.3: the SCP that opens the association asks for the SCP role.
            requestor_may_be_scp=True,
        )
    )
    return registry


async def request_commitment(
    references: list[Reference], options: CommitOptions, transaction_uid: str | None = None
) -> CommitOutcome:
    """Send N-ACTION for ``references`` and wait for the N-EVENT-REPORT on either association."""
    uid = transaction_uid or generate_uid(prefix=f"{IMPLEMENTATION_CLASS_UID}.")
    receiver = CommitmentReportReceiver("same association")
    report = receiver.expect(uid)
    listener: DicomServer | None = None
    if options.listen_port is not None:
        listener = DicomServer(
            ae_title=options.calling,
            registry=_listener_registry(receiver.sibling("new association")),
            network=NetworkSettings(shutdown_timeout=1.0),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        try:
            await listener.start(options.listen_host, options.listen_port)
        except OSError as exc:
            raise CommitFailed(
                f"cannot listen on {options.listen_host}:{options.listen_port}: {exc.strerror or exc}"
            ) from None
    try:
        assoc = await open_association(
            options.host,
            options.port,
            called_ae_title=options.called,
            calling_ae_title=options.calling,
            contexts=[ProposedContext(STORAGE_COMMITMENT_SOP_CLASS, UNCOMPRESSED)],
            connect_timeout=options.timeout,
            acse_timeout=options.timeout,
            dimse_timeout=options.timeout,
            handlers={STORAGE_COMMITMENT_SOP_CLASS: receiver},
            ssl=options.tls,
        )
        try:
            rsp, _ = await assoc.n_action(
                STORAGE_COMMITMENT_SOP_CLASS,
                STORAGE_COMMITMENT_INSTANCE,
                REQUEST_COMMITMENT,
                action_information(uid, references),
            )
            status = rsp.status if rsp.status is not None else 0xFFFF
            if status != 0:
                comment = f": {rsp.error_comment}" if rsp.error_comment else ""
                raise CommitFailed(f"N-ACTION refused: {describe(status)}{comment}")
            if options.release_at_once:
                await assoc.release(options.timeout)
            try:
                result = await asyncio.wait_for(asyncio.shield(report), options.wait)
            except TimeoutError:
                where = "on the association"
                if options.listen_port is not None:
                    where += f" or on port {options.listen_port}"
                raise CommitFailed(
                    f"no storage commitment report {where} within {options.wait:g} s"
                ) from None
        except BaseException:
            assoc.abort()
            raise
        if assoc.is_established:
            await assoc.release(options.timeout)
    except AssociationError as exc:
        raise CommitFailed(str(exc)) from None
    finally:
        if listener is not None:
            await listener.close()
        if not report.done():
            report.cancel()
        with contextlib.suppress(BaseException):
            await report
    return CommitOutcome(uid, result, result.received_on == "same association")
