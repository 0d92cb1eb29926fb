"""Which batch calls of a tracker the delivery rules may use: its batch methods, or loops over its single methods
when a subclass adapted a tracker by overriding those (a batch method inherited from above would bypass them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xflow.core.interfaces import DeliveryRecord, EventRecord, TrackerStore


def batch_method(tracker: TrackerStore, batch: str, single: str) -> Callable[[Sequence[Any]], Any]:
    """``tracker``'s batch method ``batch``; or, when a subclass overrides the single method ``single`` below the class
    whose ``batch`` would bypass it (a tracker adapted by subclassing), a loop over ``single``."""
    mro = type(tracker).__mro__
    batch_owner = next(cls for cls in mro if batch in vars(cls))
    single_owner = next(cls for cls in mro if single in vars(cls))
    if issubclass(batch_owner, single_owner):
        return getattr(tracker, batch)
    one = getattr(tracker, single)
    if batch == "succeeded_among":
        return lambda keys: {tuple(key) for key in keys if one(*key)}
    return lambda items: [one(item) for item in items] and None


def record_batch_method(tracker: TrackerStore, record_events: Callable[[Sequence[EventRecord]], Any],
                        record_deliveries: Callable[[Sequence[DeliveryRecord]], Any]
                        ) -> Callable[[Sequence[EventRecord], Sequence[DeliveryRecord]], Any]:
    """``tracker.record_batch``; or, when a subclass overrides one of the methods below the class whose
    ``record_batch`` would bypass it, the two batch calls (``record_events`` and ``record_deliveries`` as
    :func:`batch_method` gives them)."""
    mro = type(tracker).__mro__
    owner = next(cls for cls in mro if "record_batch" in vars(cls))
    if all(issubclass(owner, next(cls for cls in mro if name in vars(cls)))
           for name in ("record_events", "record_deliveries", "record_event", "record_delivery")):
        return tracker.record_batch

    def both(events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        if events:
            record_events(events)
        if deliveries:
            record_deliveries(deliveries)
    return both
