"""The blocking wrapper's C-STORE against a running storage node."""

from __future__ import annotations

import hashlib

from pacsnode.net.blocking import connect
from pacsnode.ul.negotiation import ProposedContext
from peerkit import item_of, make_instance


def test_blocking_store_is_acknowledged_and_indexed(make_storage_node) -> None:
    node = make_storage_node()
    sop_class, uid, ts, dataset = item_of(make_instance())
    contexts = [ProposedContext(sop_class, (ts,))]
    with connect(node.host, node.port, called_ae_title=node.ae_title, contexts=contexts) as assoc:
        response = assoc.store(dataset, sop_class, uid, ts)
    assert response.status == 0
    row = node.index.instance(uid)
    assert row is not None and row["sha256"] == hashlib.sha256(dataset).hexdigest()
