"""PS3.4 B.2 and C.4.3: a Storage SCP that writes each instance it receives as a PS3.10 file.

The C-GET requestor is also the Storage SCP of its sub-operations, on the same
association (PS3.4 C.4.3.1.1): `InstanceWriter` is that SCP, as a handler for
`open_association(handlers=...)`.  A data set streams from the P-DATA fragments
into a partial file behind our File Meta Information (bounded memory for any
size), which is renamed into place once complete.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacsnode.data.part10 import file_meta
from pacsnode.dimse.commands import Command, CommandField
from pacsnode.dimse.messages import c_store_rsp
from pacsnode.dimse.status import Status
from pacsnode.services.base import DataSetSink, DimseRequest, Responder
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext

log = logging.getLogger("pacsnode.net")

_SAFE_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1: what a UID may be; anything else is not a name

# Storage SOP classes a C-GET proposes by default (SCP role), most common first: a
# requestor may propose 128 presentation contexts at most (PS3.8 9.3.2.2), fewer
# than there are Storage SOP classes (PS3.4 B.5), so this is a choice.
_COMMON_STORAGE_KEYWORDS = """
CTImageStorage MRImageStorage ComputedRadiographyImageStorage DigitalXRayImageStorageForPresentation
DigitalXRayImageStorageForProcessing DigitalMammographyXRayImageStorageForPresentation
DigitalMammographyXRayImageStorageForProcessing UltrasoundImageStorage UltrasoundMultiFrameImageStorage
SecondaryCaptureImageStorage MultiFrameGrayscaleByteSecondaryCaptureImageStorage
MultiFrameGrayscaleWordSecondaryCaptureImageStorage MultiFrameTrueColorSecondaryCaptureImageStorage
MultiFrameSingleBitSecondaryCaptureImageStorage EnhancedCTImageStorage EnhancedMRImageStorage
EnhancedMRColorImageStorage LegacyConvertedEnhancedCTImageStorage LegacyConvertedEnhancedMRImageStorage
LegacyConvertedEnhancedPETImageStorage NuclearMedicineImageStorage PositronEmissionTomographyImageStorage
EnhancedPETImageStorage XRayAngiographicImageStorage EnhancedXAImageStorage
XRayRadiofluoroscopicImageStorage EnhancedXRFImageStorage XRay3DAngiographicImageStorage
XRay3DCraniofacialImageStorage BreastTomosynthesisImageStorage BreastProjectionXRayImageStorageForPresentation
BreastProjectionXRayImageStorageForProcessing DigitalIntraOralXRayImageStorageForPresentation
DigitalIntraOralXRayImageStorageForProcessing EnhancedUSVolumeStorage
RTImageStorage RTDoseStorage RTStructureSetStorage RTPlanStorage RTIonPlanStorage
RTBeamsTreatmentRecordStorage RTBrachyTreatmentRecordStorage RTTreatmentSummaryRecordStorage
RTIonBeamsTreatmentRecordStorage
SegmentationStorage SurfaceSegmentationStorage SpatialRegistrationStorage DeformableSpatialRegistrationStorage
SpatialFiducialsStorage RealWorldValueMappingStorage ParametricMapStorage
BasicTextSRStorage EnhancedSRStorage ComprehensiveSRStorage Comprehensive3DSRStorage ExtensibleSRStorage
KeyObjectSelectionDocumentStorage MammographyCADSRStorage ChestCADSRStorage XRayRadiationDoseSRStorage
RadiopharmaceuticalRadiationDoseSRStorage EnhancedXRayRadiationDoseSRStorage ProcedureLogStorage
AcquisitionContextSRStorage PatientRadiationDoseSRStorage
GrayscaleSoftcopyPresentationStateStorage ColorSoftcopyPresentationStateStorage
PseudoColorSoftcopyPresentationStateStorage BlendingSoftcopyPresentationStateStorage
XAXRFGrayscaleSoftcopyPresentationStateStorage AdvancedBlendingPresentationStateStorage
EncapsulatedPDFStorage EncapsulatedCDAStorage EncapsulatedSTLStorage EncapsulatedOBJStorage
EncapsulatedMTLStorage VLEndoscopicImageStorage VideoEndoscopicImageStorage VLMicroscopicImageStorage
VideoMicroscopicImageStorage
VLSlideCoordinatesMicroscopicImageStorage VLPhotographicImageStorage VideoPhotographicImageStorage
VLWholeSlideMicroscopyImageStorage DermoscopicPhotographyImageStorage
OphthalmicPhotography8BitImageStorage OphthalmicPhotography16BitImageStorage
OphthalmicTomographyImageStorage WideFieldOphthalmicPhotographyStereographicProjectionImageStorage
WideFieldOphthalmicPhotography3DCoordinatesImageStorage OphthalmicOpticalCoherenceTomographyEnFaceImageStorage
OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage
TwelveLeadECGWaveformStorage GeneralECGWaveformStorage AmbulatoryECGWaveformStorage
HemodynamicWaveformStorage CardiacElectrophysiologyWaveformStorage BasicVoiceAudioWaveformStorage
GeneralAudioWaveformStorage ArterialPulseWaveformStorage RespiratoryWaveformStorage
IntravascularOpticalCoherenceTomographyImageStorageForPresentation
IntravascularOpticalCoherenceTomographyImageStorageForProcessing
RawDataStorage MRSpectroscopyStorage EnhancedMRImageStorage StereometricRelationshipStorage
HangingProtocolStorage ColorPaletteStorage
"""


def _uids_of(keywords: str) -> tuple[str, ...]:
    from pydicom._uid_dict import UID_dictionary

    by_keyword = {entry[4]: uid for uid, entry in UID_dictionary.items()}
    return tuple(dict.fromkeys(by_keyword[k] for k in keywords.split() if k in by_keyword))


COMMON_STORAGE_SOP_CLASSES: tuple[str, ...] = _uids_of(_COMMON_STORAGE_KEYWORDS)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One instance received and written: where, and what it is."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int  # bytes of the data set


class _FileSink:
    """A data set streaming into ``.<n>.partial`` behind our File Meta Information (PS3.10 7.1)."""

    def __init__(self, partial: Path, meta: bytes) -> None:
        self.partial = partial
        self.size = 0
        self.error: OSError | None = None
        self._fp: BinaryIO | None = None
        try:
            self._fp = partial.open("wb")
            self._fp.write(meta)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self.discard()

    def write(self, fragment: bytes) -> None:
        """Append one P-DATA fragment (after a write error, fragments are dropped)."""
        self.size += len(fragment)
        if self._fp is None:
            return
        try:
            self._fp.write(fragment)
        except OSError as exc:
            self._fail(exc)

    def finish(self) -> bytes | None:
        """Close the partial file; the handler renames it into place."""
        if self._fp is not None:
            try:
                self._fp.close()
            except OSError as exc:
                self._fail(exc)
            self._fp = None
        return None

    def discard(self) -> None:
        """Drop the partial file."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        self.partial.unlink(missing_ok=True)


class InstanceWriter:
    """Storage SCP (PS3.4 B.2): each C-STORE-RQ becomes ``<folder>/<SOP Instance UID>.dcm``.

    The File Meta Information names the negotiated transfer syntax and the peer as
    Source AE Title; the data set bytes are written as received.  A SOP Instance
    UID that is not a plain UID (PS3.5 9.1) is never used as a file name.  A
    second copy of an instance replaces the first.  Answers Success, or A700 (Out
    of Resources) when the file cannot be written.
    """

    def __init__(self, folder: Path, on_stored: Callable[[StoredFile], None] | None = None) -> None:
        self.folder = folder
        self.on_stored = on_stored
        self.stored: list[StoredFile] = []
        self._numbers = itertools.count(1)

    def _name(self, sop_instance_uid: str) -> str:
        if _SAFE_UID.fullmatch(sop_instance_uid) and len(sop_instance_uid) <= 64:
            return f"{sop_instance_uid}.dcm"
        return f"instance-{os.getpid()}-{next(self._numbers)}.dcm"

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: Negotiated
    ) -> DataSetSink | None:
        """A file sink for a C-STORE-RQ's data set."""
        if command.command_field != CommandField.C_STORE_RQ:
            return None
        meta = file_meta(
            command.affected_sop_class_uid or context.abstract_syntax,
            command.affected_sop_instance_uid or "",
            context.transfer_syntax,
            association.called_ae_title,  # the peer sent it: PS3.10 7.1 Source AE Title
        )
        return _FileSink(self.folder / f".{os.getpid()}-{next(self._numbers)}.partial", meta)

    def handle(self, request: DimseRequest, responder: Responder) -> None:
        """Put the received file in place and answer the C-STORE-RQ (PS3.4 B.2.3)."""
        command = request.command
        if command.command_field != CommandField.C_STORE_RQ:
            responder.send(c_store_rsp(command, Status.UNRECOGNIZED_OPERATION))
            return
        sink = request.sink
        if not isinstance(sink, _FileSink):  # pragma: no cover - sink_for always gives one
            responder.send(c_store_rsp(command, Status.PROCESSING_FAILURE))
            return
        uid = command.affected_sop_instance_uid or ""
        target = self.folder / self._name(uid)
        try:
            if sink.error is not None:
                raise sink.error
            os.replace(sink.partial, target)
        except OSError as exc:
            sink.discard()
            log.warning("cannot write %s: %s", target, exc.strerror or exc)
            # PS3.4 B.2.3: A7xx Refused: Out of Resources.
            responder.send(c_store_rsp(command, Status.OUT_OF_RESOURCES, error_comment=str(exc)[:64]))
            return
        stored = StoredFile(
            target,
            command.affected_sop_class_uid or "",
            uid,
            request.context.transfer_syntax,
            sink.size,
        )
        self.stored.append(stored)
        if self.on_stored is not None:
            self.on_stored(stored)
        responder.send(c_store_rsp(command, Status.SUCCESS))
