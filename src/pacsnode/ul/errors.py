"""PS3.8 9.3.8 A-ABORT sources and reasons, and the error raised on bad input from a peer."""

from __future__ import annotations

import enum


class AbortSource(enum.IntEnum):
    """PS3.8 Table 9-26: Source field of the A-ABORT PDU."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(enum.IntEnum):
    """PS3.8 Table 9-26: Reason/Diag. field when the source is the service-provider."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RemoteProtocolError(Exception):
    """The peer broke PS3.8 or PS3.7; carries the A-ABORT the Upper Layer must send."""

    def __init__(
        self,
        message: str,
        reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER_VALUE,
        source: AbortSource = AbortSource.SERVICE_PROVIDER,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.source = source


class LocalProtocolError(Exception):
    """Our own code asked the Upper Layer for something its state does not allow."""
