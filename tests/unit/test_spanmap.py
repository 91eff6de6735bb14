"""The compiled tracker's `open` (_accel.SpanMap): the dict protocol Tracker uses, keyed by
address, holding what it maps; checked against a dict over many random changes."""

from __future__ import annotations

import gc
import random
import sys
import weakref
from typing import Any

import pytest

from profiler.agent import accelerator

COMPILED, WHY = accelerator.available()
pytestmark = pytest.mark.skipif(not COMPILED, reason=f"no compiled callbacks: {WHY}")


def span_map(weak_keys: bool = False) -> Any:
    from profiler.agent import _accel

    return _accel.SpanMap(weak_keys=weak_keys)


class Key:
    """A stand-in for a frame: any object is keyed by its address."""


@pytest.mark.parametrize("weak_keys", [False, True], ids=["frames", "weak-keys"])
def test_it_behaves_like_a_dict_through_growth_and_removal(weak_keys: bool) -> None:
    # GIVEN a SpanMap and a dict put through the same random changes
    rng = random.Random(7)
    keys = [Key() for _ in range(600)]
    mapped, reference = span_map(weak_keys), {}
    for step in range(20_000):
        key = rng.choice(keys)
        action = rng.random()
        if action < 0.5:
            mapped[key] = reference[key] = step
        elif action < 0.8:
            assert mapped.pop(key, None) == reference.pop(key, None)
        elif key in reference:
            del mapped[key], reference[key]
        # THEN every read agrees, at every step
        assert len(mapped) == len(reference)
        assert (key in mapped) == (key in reference)
        assert mapped.get(key) == reference.get(key)
    assert sorted(mapped.values()) == sorted(reference.values())
    if not weak_keys:
        assert set(mapped.keys()) == set(reference) == set(mapped)
    # AND what is missing says so as a dict would
    with pytest.raises(KeyError):
        mapped[Key()]
    with pytest.raises(KeyError):
        del mapped[Key()]
    with pytest.raises(KeyError):
        mapped.pop(Key())
    # AND clear() empties it, and it fills again
    mapped.clear()
    assert len(mapped) == 0 and mapped.values() == []
    mapped[keys[0]] = "again"
    assert mapped[keys[0]] == "again"


def test_it_holds_what_it_maps_until_removed() -> None:
    # GIVEN a key and a value known only to the map
    mapped = span_map()
    key, value = Key(), Key()
    watched = weakref.ref(key), weakref.ref(value)
    before = sys.getrefcount(key)
    mapped[key] = value
    assert sys.getrefcount(key) == before + 1
    del key, value
    gc.collect()
    # THEN both live on in the map, and go when it lets go of them
    assert all(ref() is not None for ref in watched)
    mapped.pop(watched[0]())
    gc.collect()
    assert all(ref() is None for ref in watched)


def test_with_weak_keys_it_holds_values_only_and_never_gives_keys_out() -> None:
    # GIVEN a weak-keyed SpanMap (the TaskInfos by task) given a key and a value
    mapped = span_map(weak_keys=True)
    key, value = Key(), Key()
    key_refs, value_refs = sys.getrefcount(key), sys.getrefcount(value)
    mapped[key] = value
    # THEN it holds the value, not the key, and will not hand out what it does not hold
    assert sys.getrefcount(key) == key_refs
    assert sys.getrefcount(value) == value_refs + 1
    assert mapped[key] is value and key in mapped
    with pytest.raises(TypeError, match="weak keys"):
        mapped.keys()
    with pytest.raises(TypeError, match="weak keys"):
        list(mapped)
    # AND its entries go as a dict's do
    del mapped[key]
    assert len(mapped) == 0 and sys.getrefcount(value) == value_refs
