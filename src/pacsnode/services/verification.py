"""PS3.4 Annex A: the Verification service class (C-ECHO), as SCP."""

from __future__ import annotations

from pacsnode.data.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import Command, CommandField
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.services.base import (
    DataSetSink,
    DimseRequest,
    Responder,
    ServiceRegistration,
    SOPClass,
)
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext


class VerificationSCP:
    """Answers every C-ECHO-RQ with Success (PS3.4 A.4)."""

    def handle(self, request: DimseRequest, responder: Responder) -> None:
        """Send the C-ECHO-RSP at once; any other command gets Unrecognized Operation."""
        if request.command.command_field == CommandField.C_ECHO_RQ:
            responder.send(response_to(request.command, Status.SUCCESS))
        else:
            # PS3.7 Annex C (0211H Unrecognized Operation): not a command of this SOP class.
            responder.send(response_to(request.command, Status.UNRECOGNIZED_OPERATION))

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: Negotiated
    ) -> DataSetSink | None:
        """C-ECHO carries no data set."""
        return None


def verification_service() -> ServiceRegistration:
    """The Verification SOP class, SCP and SCU."""
    return ServiceRegistration(
        name="Verification",
        standard="PS3.4 Annex A",
        sop_classes=(SOPClass(VERIFICATION_SOP_CLASS, "Verification SOP Class"),),
        transfer_syntaxes=UNCOMPRESSED_TRANSFER_SYNTAXES,
        scp=True,
        scu=True,
        handler=VerificationSCP(),
        status_codes=(
            (Status.SUCCESS, "Every C-ECHO-RQ is answered with Success (PS3.4 A.4)."),
            (
                Status.UNRECOGNIZED_OPERATION,
                "A DIMSE command other than C-ECHO-RQ on a Verification presentation context.",
            ),
        ),
    )
