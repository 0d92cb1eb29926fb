"""Event and execution ids: new ones sort by the time they were made, derived ones are deterministic and keep
their execution's time, and ids of older versions and other producers derive as they always did."""

from __future__ import annotations

import hashlib
import time
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from xflow.core.wire import derive_event_id, new_event_id


def test_new_ids_are_version_7_uuids_that_sort_by_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = []
    for _ in range(2000):
        ids.append(new_event_id())
        if len(ids) % 500 == 0:
            time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for made in ids:
        assert len(made) == 32 and made == made.lower()
        parsed = uuid.UUID(made)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= int(made[:12], 16) <= after
    prefixes = [made[:12] for made in ids]
    assert prefixes == sorted(prefixes)
    assert ids[0] < ids[-1]


def test_ids_derived_from_new_ids_keep_the_execution_time_and_are_deterministic() -> None:
    root = new_event_id()
    child = derive_event_id(root, "split", 0)
    grandchild = derive_event_id(child, "count", 3)
    for derived in (child, grandchild):
        assert uuid.UUID(derived).version == 7
        assert derived[:12] == root[:12]
    assert derive_event_id(root, "split", 0) == child
    assert len({derive_event_id(root, "split", index) for index in range(1000)}) == 1000
    assert derive_event_id(root, "other", 0) != child


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=20), st.integers(min_value=0, max_value=10_000))
def test_other_ids_derive_as_before(parent: str, function: str, index: int) -> None:
    """Ids that new_event_id does not make (version-4 ids of older versions, other producers' ids, positions) give
    the digest as they always did, so a record handled before an upgrade republishes the same ids after it."""
    try:
        expected = hashlib.sha256(f"{parent}\x1f{function}\x1f{index}".encode()).hexdigest()[:32]
    except UnicodeEncodeError:
        return
    older = uuid.UUID(int=uuid.uuid4().int).hex
    assert derive_event_id(older, function, index) == hashlib.sha256(
        f"{older}\x1f{function}\x1f{index}".encode()).hexdigest()[:32]
    if len(parent) != 32 or parent[12:13] != "7":
        assert derive_event_id(parent, function, index) == expected
    assert derive_event_id(parent, function, index) == derive_event_id(parent, function, index)
