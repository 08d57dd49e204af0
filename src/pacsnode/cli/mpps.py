"""`pacsnode mpps create|set`: the Modality Performed Procedure Step SCU (PS3.4 Annex F)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from ssl import SSLContext

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.dimse.status import describe
from pacsnode.net.client import associate
from pacsnode.ul.negotiation import ProposedContext

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def read_attributes(path: Path) -> Dataset:
    """The attributes to send: a DICOM file (with or without meta) or a DICOM JSON object."""
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data.lstrip()[:1] == b"{":
            return Dataset.from_json(json.loads(data))
        ds = dcmread(path, force=True)
        ds.file_meta = None  # type: ignore[assignment]
        return ds


async def send(
    host: str,
    port: int,
    *,
    operation: str,
    uid: str | None,
    attributes: Dataset,
    calling: str,
    called: str,
    timeout: float,
    tls: SSLContext | None = None,
) -> tuple[int, str, str]:
    """One N-CREATE or N-SET on a new association: (status, its description, instance UID)."""
    context = ProposedContext(MPPS_SOP_CLASS, _SYNTAXES)
    async with associate(
        host,
        port,
        called_ae_title=called,
        calling_ae_title=calling,
        contexts=[context],
        connect_timeout=timeout,
        acse_timeout=timeout,
        dimse_timeout=timeout,
        ssl=tls,
    ) as assoc:
        if operation == "create":
            uid = uid or generate_uid(prefix=f"{IMPLEMENTATION_CLASS_UID}.")
            rsp, _ = await assoc.n_create(MPPS_SOP_CLASS, uid, attributes)
        else:
            assert uid is not None
            rsp, _ = await assoc.n_set(MPPS_SOP_CLASS, uid, attributes)
    status = rsp.status if rsp.status is not None else 0xFFFF
    text = describe(status)
    if rsp.error_comment:
        text = f"{text}: {rsp.error_comment}"
    return status, text, rsp.affected_sop_instance_uid or uid or ""
