"""Blob names of the stored data: every stored version of an instance is a *generation* with names never reused.

The Part 10 file is ``<study>/<series>/<sop>/<generation>.dcm`` in the instance container; in
the sidecar container the metadata (``….json``), the frame offset record (``….frames``) and the
thumbnail (``….thumbnail``) of that generation carry the same stem. A replacement writes a new
generation and removes the old one once the index names the new one, so a reader never sees a
file change under a name it holds. Also the blob index tags the service writes (at commit only).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

#: Blob index tag the lifecycle policy filters on: ``auto`` blobs move to cool, cold and archive as they
#: go unread; ``hot`` ones (sidecars, labels, overviews, thumbnails, small pyramid levels) stay hot.
TIER_TAG = "dicomweb_tier"
HOT, AUTO = "hot", "auto"
#: The tag rehydration gives an instance blob before it leaves the Archive tier: the archive rule matches ``auto``
#: only, and rehydrating changes neither the last-access nor the last-modified time, so an ``auto`` blob would be
#: archived again at the next daily run.
REHYDRATED = "rehydrated"
SIDECAR_KINDS = ("json", "frames", "thumbnail")


def new_generation() -> str:
    """A generation id: microseconds since the epoch (so names sort by age) and 48 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Location:
    """Where one generation of an instance lives: its UIDs and generation."""

    study: str
    series: str
    sop: str
    generation: str

    @property
    def stem(self) -> str:
        return f"{self.study}/{self.series}/{self.sop}/{self.generation}"

    @property
    def instance(self) -> str:
        """Blob name of the Part 10 file."""
        return f"{self.stem}.dcm"

    def sidecar(self, kind: str) -> str:
        """Blob name of a sidecar: ``kind`` is "json" (metadata), "frames" (frame offset record) or
        "thumbnail" (a PNG made on first request)."""
        return f"{self.stem}.{kind}"

    @property
    def sidecars(self) -> list[str]:
        return [self.sidecar(kind) for kind in SIDECAR_KINDS]

    @classmethod
    def parse(cls, name: str) -> "Location | None":
        """The location a blob name belongs to (None for names of another shape)."""
        parts = name.rsplit(".", 1)[0].split("/")
        if len(parts) != 4 or not all(parts):
            return None
        return cls(*parts)
