"""The hot path's record constructors (:mod:`xflow.core.fastrecords`) make the very objects the dataclasses make."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from xflow.core.fastrecords import maker, new_delivery, new_delivery_record, new_event_record, new_record
from xflow.core.interfaces import Delivery, DeliveryRecord, EventRecord, Record

CASES = [
    (Delivery, new_delivery, ("Uploaded", "3", "41", "x1", b'{"a": 1}', 1_700_000_000.5)),
    (Delivery, new_delivery, ("Uploaded", "0", "7", None, b"", None)),
    (EventRecord, new_event_record, ("x1", "e1", "Uploaded", 1_700_000_000.0, "xflow/w/f", {"n": 1})),
    (DeliveryRecord, new_delivery_record, ("x1", "e1", "Uploaded", "reader", 2, "retrying", 1_700_000_000.0, 0.25,
                                           "ValueError: boom", ("INFO a", "ERROR b"))),
    (Record, new_record, ("x1", b"{}")),
]


@pytest.mark.parametrize(("cls", "make", "values"), CASES)
def test_a_made_record_is_the_record_the_class_makes(cls: type, make: object, values: tuple[object, ...]) -> None:
    expected, made = cls(*values), make(*values)  # type: ignore[operator]
    assert type(made) is cls
    assert made == expected and repr(made) == repr(expected)
    assert dataclasses.asdict(made) == dataclasses.asdict(expected)
    assert pickle.loads(pickle.dumps(made)) == expected
    if cls is not EventRecord:  # (an EventRecord holds a dict: no record that does is hashable)
        assert hash(made) == hash(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.key = "changed"  # type: ignore[attr-defined]
    assert dataclasses.replace(made) == expected


@pytest.mark.parametrize(("cls", "make", "values"), CASES)
def test_every_field_must_be_given(cls: type, make: object, values: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        make(*values[:-1])  # type: ignore[operator]
    with pytest.raises(ValueError):
        make(*values, "one too many")  # type: ignore[operator]


def test_a_class_the_shortcut_would_not_build_the_same_gets_its_own_constructor() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        value: int

    @dataclasses.dataclass(frozen=True)
    class Derived:
        value: int
        double: int = dataclasses.field(init=False, default=0)

    class Plain:
        pass

    for cls in (Checked, Slotted, Derived, Plain):
        assert maker(cls) is cls
    with pytest.raises(ValueError, match="negative"):
        maker(Checked)(-1)
