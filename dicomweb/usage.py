"""What the archive holds and costs: bytes per access tier, per study and in total, by kind of data, and what
that capacity costs a month at list prices (``dicomweb usage``, ``GET /usage``).

The numbers come from one listing of the three containers (:class:`dicomweb.storage.inventory.Inventory`),
aggregated as it arrives: no blob name is kept, and the instance and sidecar listings (each in name order, so
each study's blobs come together) are merged study by study, so memory holds the ``top`` largest studies and
a few pages of listing, whatever the size of the store. The three containers are listed at once.

The answer (``GET /usage``, ``dicomweb usage --json``)::

    {
      "tiers": {"Hot": {"bytes": n, "blobs": n, "usdPerMonth": x}, "Cool": {…}, "Cold": {…}, "Archive": {…}},
      "total": {"bytes": n, "blobs": n, "usdPerMonth": x},
      "byKind": {
        "instances":   {"tiers": {…}, "total": {…}},   Part 10 files, <study>/<series>/<sop>/<generation>.dcm
        "sidecars":    {"tiers": {…}, "total": {…}},   ….json, ….frames, ….thumbnail of each generation
        "staging":     {"tiers": {…}, "total": {…}},   upload sessions' data blobs and records, operation records
        "softDeleted": {"tiers": {…}, "total": {…}}    soft-deleted blobs and snapshots of any of the three
      },
      "studies": [{"study": uid, "tiers": {…}, "total": {…}}, …],   the `top` largest, largest first
      "otherStudies": {"studies": n, "tiers": {…}, "total": {…}},   the rest, summed
      "prices": {"Hot": 0.0184, "Cool": 0.01, "Cold": 0.0036, "Archive": 0.00099},
      "bytesPerGB": 1073741824
    }

Every tier map has all four tiers. ``tiers`` and ``total`` cover every blob listed (the sum of ``byKind``); a
study counts its instance files and sidecars (not soft-deleted ones), so ``studies`` and ``otherStudies``
together are the instances and sidecars whose names have the study shape. A blob whose rehydration is pending
is still Archive (:mod:`dicomweb.storage.inventory`). ``usdPerMonth`` is bytes / 2**30 (GB = 2^30 bytes)
× the tier's price per GB and month (``DICOMWEB_PRICES_PER_GB_MONTH``); a total's is the sum of its tiers'.
It is capacity only: no transactions, reads, rehydration, early deletion, uncommitted blocks, Cosmos DB,
queues or logs. Study UIDs identify no patient.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing

from dicomweb.errors import DicomWebError
from dicomweb.storage.inventory import KINDS, TIERS, BlobEntry, Inventory
from dicomweb.storage.naming import Location

#: Bytes in the GB prices are per.
GB = 2**30
#: Studies listed one by one unless told otherwise; the rest are summed.
DEFAULT_TOP = 20
#: The most studies ``GET /usage`` lists one by one.
MAX_TOP = 1000
#: The kind soft-deleted blobs and snapshots count under, whichever container holds them.
SOFT_DELETED = "softDeleted"
#: Listing pages each container may be ahead of the aggregation (a page is at most 5,000 entries).
PAGES_AHEAD = 2


class Tally:
    """Bytes and blobs per tier."""

    __slots__ = ("blobs", "bytes")

    def __init__(self) -> None:
        self.bytes = dict.fromkeys(TIERS, 0)
        self.blobs = dict.fromkeys(TIERS, 0)

    def add(self, tier: str, size: int) -> None:
        self.bytes[tier] += size
        self.blobs[tier] += 1

    def merge(self, other: Tally) -> Tally:
        """Add ``other``'s counts to this one's; this one."""
        for tier in TIERS:
            self.bytes[tier] += other.bytes[tier]
            self.blobs[tier] += other.blobs[tier]
        return self

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def render(self, prices: dict[str, float]) -> dict[str, object]:
        """``{"tiers": {tier: {"bytes", "blobs", "usdPerMonth"}}, "total": {…}}``."""
        tiers = {tier: {"bytes": self.bytes[tier], "blobs": self.blobs[tier],
                        "usdPerMonth": monthly(self.bytes[tier], prices[tier])} for tier in TIERS}
        total = {"bytes": self.total_bytes, "blobs": sum(self.blobs.values()),
                 "usdPerMonth": sum(entry["usdPerMonth"] for entry in tiers.values())}
        return {"tiers": tiers, "total": total}


def monthly(size: int, price_per_gb: float) -> float:
    """What ``size`` bytes cost a month at ``price_per_gb`` (GB = 2**30 bytes)."""
    return size / GB * price_per_gb


def study_of(name: str) -> str | None:
    """The study an instance file or sidecar belongs to (None for a name of another shape)."""
    location = Location.parse(name)
    return None if location is None else location.study


class Usage:
    """The aggregation, fed as the listing goes: totals per kind, and per study the ``top`` largest (no I/O)."""

    def __init__(self, top: int) -> None:
        if top < 0:
            raise ValueError("top must be at least 0")
        self.top = top
        self.kinds = {kind: Tally() for kind in (*KINDS, SOFT_DELETED)}
        #: A min-heap of (bytes, study, tally): the ``top`` largest studies seen so far.
        self._largest: list[tuple[int, str, Tally]] = []
        self.other = Tally()
        self.other_studies = 0

    def count(self, kind: str, entry: BlobEntry) -> None:
        """One blob of ``kind``'s container, in the totals."""
        self.kinds[SOFT_DELETED if entry.soft_deleted else kind].add(entry.tier, entry.size)

    def study(self, uid: str, tally: Tally) -> None:
        """Everything of study ``uid`` (each study once): kept when among the ``top`` largest, else summed."""
        item = (tally.total_bytes, uid, tally)
        if len(self._largest) < self.top:
            heapq.heappush(self._largest, item)
            return
        if self._largest and item[:2] > self._largest[0][:2]:
            item = heapq.heapreplace(self._largest, item)
        self.other.merge(item[2])
        self.other_studies += 1

    def report(self, prices: Iterable[tuple[str, float]]) -> dict[str, object]:
        """The answer, in the shape the module documents."""
        price = dict(prices)
        everything = Tally()
        for tally in self.kinds.values():
            everything.merge(tally)
        whole = everything.render(price)
        studies = sorted(self._largest, key=lambda item: (-item[0], item[1]))
        return {
            "tiers": whole["tiers"],
            "total": whole["total"],
            "byKind": {kind: tally.render(price) for kind, tally in self.kinds.items()},
            "studies": [{"study": uid, **tally.render(price)} for _, uid, tally in studies],
            "otherStudies": {"studies": self.other_studies, **self.other.render(price)},
            "prices": {tier: price[tier] for tier in TIERS},
            "bytesPerGB": GB,
        }


async def _studies(kind: str, pages: AsyncIterator[list[BlobEntry]], usage: Usage
                   ) -> AsyncIterator[tuple[str, Tally]]:
    """Count every blob of ``kind`` into ``usage``; yield (study, its blobs) for each study in listing order.

    The listing is in name order, so a study's blobs (``<study>/…``) come together; a study seen again
    after another means the listing broke that order, and the per-study numbers would be wrong.
    """
    current, key, tally = None, "", Tally()
    async for page in pages:
        for entry in page:
            usage.count(kind, entry)
            if entry.soft_deleted or (study := study_of(entry.name)) is None:
                continue
            if study != current:
                if current is not None:
                    yield current, tally
                if f"{study}/" <= key:
                    raise DicomWebError(f"the {kind} listing is not in name order (at study {study})")
                current, key, tally = study, f"{study}/", Tally()
            tally.add(entry.tier, entry.size)
    if current is not None:
        yield current, tally


async def _merged(first: AsyncIterator[tuple[str, Tally]], second: AsyncIterator[tuple[str, Tally]]
                  ) -> AsyncIterator[tuple[str, Tally]]:
    """Two study streams in name order (by ``<study>/``) as one, a study in both combined."""
    a, b = await anext(first, None), await anext(second, None)
    while a is not None or b is not None:
        if b is None or (a is not None and f"{a[0]}/" < f"{b[0]}/"):
            yield a
            a = await anext(first, None)
        elif a is None or f"{b[0]}/" < f"{a[0]}/":
            yield b
            b = await anext(second, None)
        else:
            yield a[0], a[1].merge(b[1])
            a, b = await anext(first, None), await anext(second, None)


async def _ahead(pages: AsyncGenerator[list[BlobEntry], None], depth: int = PAGES_AHEAD
                 ) -> AsyncGenerator[list[BlobEntry], None]:
    """``pages`` fetched by a task of their own, up to ``depth`` pages ahead (so containers are listed at once)."""
    queue: asyncio.Queue[list[BlobEntry] | BaseException | None] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async with aclosing(pages):
                async for page in pages:
                    await queue.put(page)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put(exc)
            return
        await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def aggregate(instances: AsyncIterator[list[BlobEntry]], sidecars: AsyncIterator[list[BlobEntry]],
                    staging: AsyncIterator[list[BlobEntry]], top: int) -> Usage:
    """Aggregate the three containers' listings (pages in name order) as they arrive."""
    usage = Usage(top)

    async def by_study() -> None:
        async with aclosing(_studies("instances", instances, usage)) as files, \
                aclosing(_studies("sidecars", sidecars, usage)) as derived, \
                aclosing(_merged(files, derived)) as studies:
            async for uid, tally in studies:
                usage.study(uid, tally)

    async def rest() -> None:
        async for page in staging:
            for entry in page:
                usage.count("staging", entry)

    tasks = [asyncio.create_task(by_study()), asyncio.create_task(rest())]
    try:
        await asyncio.gather(*tasks)
    finally:  # one failed: the other stops before its listing is closed
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return usage


async def measure(inventory: Inventory, prices: Iterable[tuple[str, float]], top: int = DEFAULT_TOP
                  ) -> dict[str, object]:
    """What the store holds and costs (the module's JSON), listing the ``top`` largest studies one by one."""
    async with aclosing(_ahead(inventory.pages("instances"))) as instances, \
            aclosing(_ahead(inventory.pages("sidecars"))) as sidecars, \
            aclosing(_ahead(inventory.pages("staging"))) as staging:
        usage = await aggregate(instances, sidecars, staging, top)
    return usage.report(prices)


# --- the table `dicomweb usage` prints --------------------------------------------------------------------


def human_bytes(size: int) -> str:
    """``size`` in binary units (KiB = 1024 bytes … PiB)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def dollars(amount: float) -> str:
    """A monthly amount: cents, "<$0.01" for less than a cent but more than nothing."""
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return "<$0.01"
    return f"${amount:,.2f}"


def table(report: dict) -> str:
    """The report as text: a row per kind and per listed study, a column per tier and the total, each cell
    its size and monthly list price ("-": no blob)."""
    columns = (*TIERS, "Total")

    def cells(part: dict) -> list[str]:
        entries = [part["tiers"][tier] for tier in TIERS] + [part["total"]]
        return [f"{human_bytes(e['bytes'])} {dollars(e['usdPerMonth'])}" if e["blobs"] else "-" for e in entries]

    kinds = report["byKind"]
    other = report["otherStudies"]
    rows = [("everything", cells(report))]
    rows += [(f"  {kind}", cells(kinds[kind])) for kind in KINDS]
    rows.append(("  soft-deleted", cells(kinds[SOFT_DELETED])))
    if report["studies"]:
        rows.append(("studies, largest first", []))
    rows += [(f"  {study['study']}", cells(study)) for study in report["studies"]]
    if other["studies"]:
        rows.append((f"  {other['studies']} other studies", cells(other)))
    label = max(len(name) for name, _ in rows)
    widths = [max([len(column)] + [len(values[i]) for _, values in rows if values]) for i, column in enumerate(columns)]
    lines = ["  ".join([" " * label, *(column.rjust(width) for column, width in zip(columns, widths))]).rstrip()]
    for name, values in rows:
        lines.append("  ".join([name.ljust(label), *(v.rjust(w) for v, w in zip(values, widths))]).rstrip())
    prices = ", ".join(f"{tier} ${report['prices'][tier]}" for tier in TIERS)
    lines.append(f"list prices per GB and month (GB = 2^30 bytes; DICOMWEB_PRICES_PER_GB_MONTH): {prices}. "
                 "Capacity only: no transactions, retrieval, rehydration or early deletion.")
    return "\n".join(lines)
