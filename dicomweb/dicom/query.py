"""QIDO-RS query parameters (PS3.18 §8.3.4) turned into typed filters: no HTTP, no storage.

Matching (PS3.4 §C.2.2.2): an empty value matches everything; UIDs match one of a
comma-separated list (repeated keys are OR-ed too); ``*`` and ``?`` are wildcards;
dates, times and datetimes match ranges ``a-b``, ``-b`` and ``a-``; person names
match case-insensitively, and with ``fuzzymatching=true`` each word of the value
matches the start of any word of the name, as the Azure DICOM service does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from dicomweb.dicom.attributes import (
    LEVELS,
    Attribute,
    is_dicom_attribute,
    keyword_of,
    lookup,
    name_words,
    normalise_datetime,
    normalise_time,
)
from dicomweb.dicom.syntax import bounded_int, is_valid_uid
from dicomweb.errors import BadRequest

#: Results per page when ``limit`` is absent, and the most one page may hold.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Matches a search may skip: skipping is read and paid for match by match, so deep pages are refused.
MAX_OFFSET = 10_000
#: The longest matching value (a PN holds at most 3 × 64 characters, a UID list a few dozen UIDs).
MAX_VALUE_CHARS = 4096
#: Values of one attribute (a UID list), and ``*`` in one wildcard pattern.
MAX_VALUES = 200
MAX_WILDCARDS = 16


@dataclass(frozen=True)
class Filter:
    """One matching condition on an attribute of the index."""

    attribute: Attribute
    op: str  # "in" | "prefix" | "wildcard" | "range" | "words"
    values: tuple[Any, ...]  # in: values; prefix: (text,); wildcard: (regex,); range: (low|None, high|None); words


@dataclass
class Query:
    """A parsed QIDO-RS request."""

    level: str
    filters: list[Filter] = field(default_factory=list)
    include_all: bool = False
    include: set[str] = field(default_factory=set)  # keywords (or tags without a keyword)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def parse_query(pairs: Iterable[tuple[str, str]], level: str, scope: dict[str, str] | None = None) -> Query:
    """Parse decoded query ``pairs`` for a search at ``level``; ``scope`` holds UIDs from the path."""
    query = Query(level)
    pairs = list(pairs)
    fuzzy = False
    grouped: dict[str, tuple[Attribute, list[str]]] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered == "fuzzymatching":
            fuzzy = _boolean(name, value)
        elif lowered == "includefield":
            _include(query, name, value)
        elif lowered in ("limit", "offset"):
            setattr(query, lowered, _count(name, value))
        elif name.startswith("_") or lowered in ("charset", "accept"):
            query.warnings.append(f"parameter {name} is not supported and was ignored")
        else:
            attribute = lookup(name)
            if attribute is None or not attribute.searchable:
                if not is_dicom_attribute(name):
                    raise BadRequest(f"unknown query parameter {name!r}")
                query.warnings.append(f"matching on {keyword_of(name)} is not supported and was ignored")
                continue
            if LEVELS.index(attribute.level) > LEVELS.index(level):
                query.warnings.append(f"{attribute.keyword} is below the {level} level and was ignored")
                continue
            grouped.setdefault(attribute.keyword, (attribute, []))[1].append(value)
    for keyword, (attribute, values) in grouped.items():
        built = _filter(attribute, values, fuzzy)
        if built is not None:
            query.filters.append(built)
    for keyword, uid in (scope or {}).items():
        attribute = lookup(keyword)
        assert attribute is not None
        query.filters.append(Filter(attribute, "in", (uid,)))
    return query


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value.lower() == "true"


def _count(name: str, value: str) -> int:
    low, high = (1, MAX_LIMIT) if name.lower() == "limit" else (0, MAX_OFFSET)
    number = bounded_int(value, low, high)
    if number is None:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return number


def _include(query: Query, name: str, value: str) -> None:
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == "all":
            query.include_all = True
        elif is_dicom_attribute(item):
            query.include.add(keyword_of(item))
        else:
            raise BadRequest(f"{name}={item!r} names no DICOM attribute")


def _filter(attribute: Attribute, raw: list[str], fuzzy: bool) -> Filter | None:
    """One filter from every value given for an attribute; None for universal matching."""
    values = [v.strip() for value in raw for v in (value.split(",") if attribute.kind != "pn" else [value])]
    values = [v for v in values if v]
    if not values:
        return None
    name = attribute.keyword
    if len(values) > MAX_VALUES or any(len(v) > MAX_VALUE_CHARS for v in values):
        raise BadRequest(f"{name} takes at most {MAX_VALUES} values of at most {MAX_VALUE_CHARS} characters")
    kind = attribute.kind
    if kind in ("date", "time", "datetime"):
        if len(values) != 1:
            raise BadRequest(f"{name} takes one value or one range")
        return _range(attribute, values[0])
    if any(("*" in v or "?" in v) for v in values):
        if len(values) != 1 or kind in ("uid", "number"):
            raise BadRequest(f"{name}: wildcards need a single text value")
        text = re.sub(r"\*+", "*", values[0].upper() if kind == "pn" else values[0])
        if text.count("*") > MAX_WILDCARDS:
            raise BadRequest(f"{name}: a pattern holds at most {MAX_WILDCARDS} * wildcards")
        head = text.rstrip("*")
        if head and "*" not in head and "?" not in head:
            return Filter(attribute, "prefix", (head,))
        return Filter(attribute, "wildcard", (_regex(text),))
    if kind == "uid":
        bad = [v for v in values if not is_valid_uid(v)]
        if bad:
            raise BadRequest(f"{name}={bad[0]!r} is not a valid UID")
        return Filter(attribute, "in", tuple(values))
    if kind == "number":
        if not all(re.fullmatch(r"[+-]?\d+", v) for v in values):
            raise BadRequest(f"{name} must be an integer")
        return Filter(attribute, "in", tuple(int(v) for v in values))
    if kind == "pn":
        if fuzzy:
            words = tuple(w for v in values for w in name_words(v))
            return Filter(attribute, "words", words) if words else None
        return Filter(attribute, "in", tuple(v.upper() for v in values))
    return Filter(attribute, "in", tuple(values))


def _regex(pattern: str) -> str:
    """A DICOM wildcard pattern (``*`` any run, ``?`` one character) as an anchored regular expression
    whose cost is linear in the value's length, however many wildcards there are.

    A naive ``.*`` per ``*`` backtracks exponentially in the number of wildcards. Here every
    segment between two ``*`` is matched at its leftmost occurrence and never revisited (an
    atomic group, written as a lookahead and a backreference, which Cosmos DB's PCRE and
    JavaScript both support); only the last segment is anchored at the end. The leftmost
    occurrence is always a safe choice, so this matches exactly what the pattern matches.
    """
    segments = pattern.split("*")

    def literal(segment: str) -> str:
        return "".join("." if c == "?" else re.escape(c) for c in segment)

    if len(segments) == 1:
        return f"^{literal(pattern)}$"
    middle = "".join(f"(?=(.*?{literal(s)}))\\{n}" for n, s in enumerate(segments[1:-1], 1))
    return f"^{literal(segments[0])}{middle}.*{literal(segments[-1])}$"


_FORMATS = {
    "date": (r"\d{8}", "%Y%m%d"),
    "time": (r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", None),
    "datetime": (r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?(\+\d{4})?", None),
}


def _bound(attribute: Attribute, text: str, upper: bool) -> str | None:
    if not text:
        return None
    pattern, date_format = _FORMATS[attribute.kind]
    if not re.fullmatch(pattern, text):
        raise BadRequest(f"{attribute.keyword}={text!r} is not a valid {attribute.kind.upper()} value")
    if date_format:
        try:
            datetime.strptime(text, date_format)
        except ValueError:
            raise BadRequest(f"{attribute.keyword}={text!r} is not a valid date") from None
        return text
    value = normalise_time(text, upper) if attribute.kind == "time" else normalise_datetime(text, upper)
    time = value[-13:]
    valid_date = True
    if attribute.kind == "datetime":
        given = text[:8].split("+")[0]
        try:
            datetime.strptime(given, {4: "%Y", 6: "%Y%m", 8: "%Y%m%d"}[len(given)])
        except (KeyError, ValueError):
            valid_date = False
    if not valid_date or int(time[:2]) > 23 or int(time[2:4]) > 59 or int(time[4:6]) > 60:
        raise BadRequest(f"{attribute.keyword}={text!r} is not a valid {attribute.kind.upper()} value")
    return value


def _range(attribute: Attribute, value: str) -> Filter:
    """A single value (matching its whole precision) or a range ``a-b``, ``-b``, ``a-``.

    Datetimes in a range carry no negative time-zone offset (the ``-`` is the range's).
    """
    if "-" not in value:
        return Filter(attribute, "range", (_bound(attribute, value, False), _bound(attribute, value, True)))
    low_text, high_text = value.split("-", 1)
    low, high = _bound(attribute, low_text, False), _bound(attribute, high_text, True)
    if low is None and high is None:
        raise BadRequest(f"{attribute.keyword}={value!r} is an empty range")
    if low is not None and high is not None and low > high:
        raise BadRequest(f"{attribute.keyword}={value!r} ends before it starts")
    return Filter(attribute, "range", (low, high))
