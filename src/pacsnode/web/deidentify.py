"""POST /api/studies/{study}/deidentify: a PS3.15 Annex E de-identified copy of a study, kept or sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from pacsnode.archive.query import InstanceRef
from pacsnode.audit.builders import StudyTally, exported
from pacsnode.deid import DeidConfig, Deidentifier, OptionError, Refused, parse_options
from pacsnode.deid.pixels import PixelRuleError, load_rules
from pacsnode.deid.pseudonyms import PseudonymError, load_table
from pacsnode.deid.uids import KeyFileError, load_or_create_key
from pacsnode.net.client import AssociationError, NoAcceptedContext, associate
from pacsnode.security.tls import dicom_client_context
from pacsnode.ul.negotiation import ProposedContext
from pacsnode.web.auditing import requester
from pacsnode.web.context import WebContext, check_uid

KEY_FILE = "deid.key"  # in the data folder: created once, keys UIDs, date shifts and pseudonyms
PSEUDONYMS_FILE = "deid-pseudonyms.csv"  # optional, in the data folder
PIXEL_RULES_FILE = "deid-pixel-rules.toml"  # optional, in the data folder
_SUCCESS = 0x0000
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


class DeidentifyRequest(BaseModel):
    """What to apply and where the copy goes."""

    options: list[str] = Field(
        default_factory=list, description="PS3.15 E.3 options, e.g. retain-modified-dates"
    )
    destination: str | None = Field(default=None, description="An AE title of [peers]; absent: this archive")
    allow_burned_in: bool = False


def _config(ctx: WebContext, body: DeidentifyRequest) -> DeidConfig:
    data: Path = ctx.settings.node.data
    try:
        pseudonyms = data / PSEUDONYMS_FILE
        rules = data / PIXEL_RULES_FILE
        return DeidConfig(
            key=load_or_create_key(data / KEY_FILE),
            options=parse_options(body.options),
            pseudonyms=load_table(pseudonyms) if pseudonyms.exists() else {},
            pixel_rules=load_rules(rules) if rules.exists() else (),
            allow_burned_in=body.allow_burned_in,
        )
    except OptionError as exc:
        raise HTTPException(400, str(exc)) from None
    except (KeyFileError, PseudonymError, PixelRuleError) as exc:
        raise HTTPException(500, str(exc)) from None


def _deidentify(
    ctx: WebContext, deidentifier: Deidentifier, refs: list[InstanceRef]
) -> tuple[list[tuple[bytes, str, str, str]], list[dict[str, str]]]:
    """(data set bytes, SOP class, SOP instance, transfer syntax) per de-identified instance (blocking)."""
    done: list[tuple[bytes, str, str, str]] = []
    refused: list[dict[str, str]] = []
    for ref in refs:
        try:
            data, result = deidentifier.deidentify_bytes(ctx.archive.store.absolute(ref.path).read_bytes())
        except (Refused, OSError) as exc:
            refused.append({"SOPInstanceUID": ref.sop_instance_uid, "reason": str(exc)})
            continue
        offset = 132 + 12 + int.from_bytes(data[140:144], "little")  # PS3.10 7.1: past our own meta
        done.append((data[offset:], ref.sop_class_uid, result.sop_instance_uid, result.transfer_syntax))
    return done, refused


async def _send(
    ctx: WebContext, title: str, instances: list[tuple[bytes, str, str, str]]
) -> list[dict[str, str]]:
    peer = ctx.settings.peers.get(title)
    endpoint = peer.endpoint() if peer is not None else None
    if peer is None or endpoint is None:
        raise HTTPException(400, f"destination {title!r} is not a [peers] AE with a host and port")
    contexts = [ProposedContext(c, (t,)) for c, t in dict.fromkeys((i[1], i[3]) for i in instances)][:128]
    failed: list[dict[str, str]] = []
    try:
        async with associate(
            endpoint[0],
            endpoint[1],
            called_ae_title=title,
            calling_ae_title=ctx.settings.node.aet,
            contexts=contexts,
            ssl=dicom_client_context(ctx.settings.node) if peer.tls else None,
        ) as assoc:
            for data, sop_class, sop_instance, syntax in instances:
                try:
                    response = await assoc.store(data, sop_class, sop_instance, syntax)
                except NoAcceptedContext as exc:
                    failed.append({"SOPInstanceUID": sop_instance, "reason": str(exc)})
                    continue
                if response.status not in (_SUCCESS, *_WARNINGS):
                    failed.append(
                        {"SOPInstanceUID": sop_instance, "reason": f"C-STORE status {response.status:04X}"}
                    )
    except AssociationError as exc:
        raise HTTPException(502, f"{title}: {exc}") from None
    return failed


def add_deidentify(api: FastAPI, ctx: WebContext) -> None:
    """The route; it needs the admin role (web/auth.py: routes no rule names need admin)."""

    @api.post("/studies/{study}/deidentify", summary="Write a de-identified copy of a study (PS3.15 Annex E)")
    async def deidentify(
        request: Request, study: str, body: DeidentifyRequest | None = None
    ) -> dict[str, Any]:
        check_uid(study)
        body = body or DeidentifyRequest()
        config = _config(ctx, body)
        refs = await ctx.run(ctx.find_instances, study)
        if not refs:
            raise HTTPException(404, "no such study")
        deidentifier = Deidentifier(config)
        instances, refused = await ctx.run(_deidentify, ctx, deidentifier, refs)
        failed: list[dict[str, str]] = []
        if body.destination:
            failed = await _send(ctx, body.destination, instances)
        else:
            for data, sop_class, sop_instance, syntax in instances:
                sink = ctx.archive.open_sink(
                    sop_class, sop_instance, syntax, source_ae_title=ctx.settings.node.aet
                )
                sink.write(data)
                sink.finish()
                result = await ctx.archive.ingest(sink)
                if not result.ok:
                    failed.append({"SOPInstanceUID": sop_instance, "reason": result.comment or "not stored"})
        # PS3.15 A.5.3.4 Export: the study left this archive's control as a de-identified copy.
        tally = StudyTally()
        gone = {f["SOPInstanceUID"] for f in (*refused, *failed)}
        for ref in refs:
            mapped = deidentifier.map_uid(ref.sop_instance_uid)
            reason = (
                "not de-identified or not stored" if mapped in gone or ref.sop_instance_uid in gone else None
            )
            tally.add(
                ref.study_instance_uid,
                ref.sop_class_uid,
                patient_id=ref.patient_id,
                patient_name=ref.patient_name,
                accession_number=ref.accession_number,
                failure=reason,
            )
        where = f"dicom://{body.destination}" if body.destination else f"dicom://{ctx.settings.node.aet}"
        for ref_study in tally.studies():
            ctx.audit.emit(exported(requester(request), f"{where}/deidentified", ref_study))
        return {
            "StudyInstanceUID": deidentifier.map_uid(study),
            "destination": body.destination or ctx.settings.node.aet,
            "instances": len(instances) - len(failed),
            "refused": refused,
            "failed": failed,
        }
