"""PS3.15 Annex E de-identification: the Basic Application Level Confidentiality Profile and its options."""

from __future__ import annotations

from pacsnode.deid.engine import DeidConfig, Deidentifier, FileResult, Refused
from pacsnode.deid.options import Option, OptionError, parse_options

__all__ = [
    "DeidConfig",
    "Deidentifier",
    "FileResult",
    "Option",
    "OptionError",
    "Refused",
    "deidentify_dataset",
    "parse_options",
]


def deidentify_dataset(ds: "Dataset", config: DeidConfig) -> "Dataset":  # noqa: UP037
    """The hook for routing rules: de-identify ``ds`` in place and return it (raises Refused).

    For many data sets, build one ``Deidentifier(config)`` and call it: it keeps
    the UID mapping's cache between calls.
    """
    return Deidentifier(config)(ds)


from pydicom.dataset import Dataset  # noqa: E402
