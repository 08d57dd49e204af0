"""C-MOVE and C-GET planning (services/query_retrieve.py): contexts, syntaxes, counts."""

from __future__ import annotations

from pathlib import Path

from pacsnode.archive.query import InstanceRef
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacsnode.services.query_retrieve import Counts, choose_context, find_extended_negotiation, plan_contexts
from pacsnode.ul.negotiation import NegotiatedContext

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


def ref(sop: str, ts: str, uid: str = "1.2.3") -> InstanceRef:
    return InstanceRef(sop, uid, ts, "objects/x.dcm", 1000)


def test_each_stored_syntax_and_uncompressed_are_proposed() -> None:
    (contexts,) = plan_contexts(
        [ref(CT, JPEG_LOSSLESS), ref(CT, EXPLICIT_VR_LITTLE_ENDIAN), ref(MR, JPEG_LOSSLESS)]
    )
    proposed = {(c.abstract_syntax, tuple(c.transfer_syntaxes)) for c in contexts}
    uncompressed = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
    assert proposed == {
        (CT, (JPEG_LOSSLESS,)),
        (CT, uncompressed),
        (MR, (JPEG_LOSSLESS,)),
        (MR, uncompressed),
    }
    assert len(contexts) == len(proposed)  # no duplicates


def test_more_than_128_contexts_take_several_associations() -> None:
    refs = [ref(f"1.2.840.10008.5.1.4.1.1.{n}", JPEG_LOSSLESS) for n in range(100)]
    plans = plan_contexts(refs)
    assert [len(p) for p in plans] == [128, 72]
    assert all(len({(c.abstract_syntax, tuple(c.transfer_syntaxes)) for c in p}) == len(p) for p in plans)


def test_a_sop_class_is_never_split_over_two_associations() -> None:
    # One class with one context first: the 128-context boundary falls inside a later
    # class (its stored syntax on one association, its uncompressed fallback on the next),
    # unless plans are made of whole classes.
    refs = [ref(CT, EXPLICIT_VR_LITTLE_ENDIAN)]
    refs += [ref(f"1.2.840.10008.5.1.4.1.1.{n}", JPEG_LOSSLESS) for n in range(100, 200)]
    plans = plan_contexts(refs)
    assert sum(len(p) for p in plans) == 1 + 2 * 100
    assert all(len(p) <= 128 for p in plans)
    homes = {}
    for number, plan in enumerate(plans):
        for ctx in plan:
            assert homes.setdefault(ctx.abstract_syntax, number) == number, ctx.abstract_syntax


def test_the_stored_syntax_wins_else_uncompressed_else_nothing() -> None:
    accepted = [
        NegotiatedContext(1, CT, IMPLICIT_VR_LITTLE_ENDIAN),
        NegotiatedContext(3, CT, EXPLICIT_VR_LITTLE_ENDIAN),
        NegotiatedContext(5, CT, JPEG_LOSSLESS),
        NegotiatedContext(7, MR, IMPLICIT_VR_LITTLE_ENDIAN, requestor_is_scp=True),
    ]
    assert choose_context(accepted, ref(CT, JPEG_LOSSLESS)).context_id == 5  # type: ignore[union-attr]
    assert choose_context(accepted, ref(CT, "1.2.840.10008.1.2.4.90")).context_id == 3  # type: ignore[union-attr]
    assert choose_context(accepted, ref("1.2.3.4", EXPLICIT_VR_LITTLE_ENDIAN)) is None
    # C-GET: only contexts where the SCU took the SCP role (PS3.7 D.3.3.4).
    assert choose_context(accepted, ref(CT, JPEG_LOSSLESS), requestor_scp=True) is None
    assert choose_context(accepted, ref(MR, JPEG_LOSSLESS), requestor_scp=True).context_id == 7  # type: ignore[union-attr]


def test_counts_and_final_fields() -> None:
    counts = Counts(4)
    counts.record(0x0000, "a")
    counts.record(0xB000, "b")  # warning (coercion)
    counts.record(0xA700, "c")
    counts.fail("d")
    assert (counts.remaining, counts.completed, counts.warning, counts.failed) == (0, 1, 1, 2)
    assert counts.failed_uids == ["c", "d"]
    assert "number_of_remaining_suboperations" not in counts.fields(final=True)
    assert counts.fields(final=False)["number_of_remaining_suboperations"] == 0


def test_extended_negotiation_answer() -> None:
    # PS3.4 C.5.1.1: relational, combined date-time, fuzzy names accepted; timezone refused.
    assert find_extended_negotiation(CT, bytes([1, 1, 1, 1])) == bytes([1, 1, 1, 0])
    assert find_extended_negotiation(CT, bytes([0, 1])) == bytes([0, 1])
    assert find_extended_negotiation(CT, b"") == b""


def test_dataset_offset_of_own_and_other_files(tmp_path: Path) -> None:
    from pacsnode.data.part10 import dataset_offset, layout_of
    from peerkit import make_instance

    ds = make_instance()
    with_preamble = tmp_path / "a.dcm"
    ds.save_as(with_preamble, enforce_file_format=True)
    head = with_preamble.read_bytes()
    assert dataset_offset(head, with_preamble) == layout_of(with_preamble).dataset_offset
    bare_meta = tmp_path / "b.dcm"
    bare_meta.write_bytes(head[128:])  # "DICM" first: not the node's layout, pydicom decides
    assert dataset_offset(bare_meta.read_bytes(), bare_meta) == layout_of(bare_meta).dataset_offset
