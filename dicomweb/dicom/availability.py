"""Instance Availability (0008,0056), PS3.3 §C.4.23.1.1: whether an instance's bytes can be read at once.

ONLINE: at once (Hot, Cool and Cold are all read in milliseconds). NEARLINE: being brought
back (a rehydration from the Archive tier is pending). OFFLINE: only after someone asks for
it (the Archive tier). A study or series is as available as its least available instance
(PS3.18 §10.6.3.3 returns the attribute at every level).
"""

from __future__ import annotations

ONLINE, NEARLINE, OFFLINE = "ONLINE", "NEARLINE", "OFFLINE"
#: From most to least available.
ORDER = (ONLINE, NEARLINE, OFFLINE)


def least(counts: dict[str, int]) -> str:
    """The least available of a group, from how many of its instances are NEARLINE and OFFLINE."""
    if counts.get(OFFLINE, 0) > 0:
        return OFFLINE
    if counts.get(NEARLINE, 0) > 0:
        return NEARLINE
    return ONLINE

