"""Blob names: generations sort by age, and every name parses back to its generation."""

from __future__ import annotations

from dicomweb.storage.naming import Location, new_generation

HERE = Location("1.2", "1.2.3", "1.2.3.4", "0000000000000a00000000000b")


def test_generation_names_sort_by_age_and_parse_back() -> None:
    first = new_generation()
    assert new_generation() > first and len(first) == 26
    assert HERE.instance == "1.2/1.2.3/1.2.3.4/0000000000000a00000000000b.dcm"
    assert HERE.sidecars == [HERE.stem + ".json", HERE.stem + ".frames", HERE.stem + ".thumbnail"]
    assert Location.parse(HERE.instance) == HERE and Location.parse(HERE.sidecar("frames")) == HERE
    assert Location.parse("1.2/1.2.3/1.2.3.4.dcm") is None
