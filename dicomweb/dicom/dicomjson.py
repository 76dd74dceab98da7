"""DICOM JSON (PS3.18 §F.2) for stored instances, with bulk data left in the file.

Binary values (OB, OW, OD, OF, OL, OV, UN) become relative ``BulkDataURI`` s of the
form ``bulkdata/<tag path>``; the byte range each one names in the stored file is
recorded beside them so the bulkdata resource serves it with one ranged read.
:func:`dicomweb.records.served_metadata` makes the URIs absolute per request.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from dicomweb.errors import InvalidDataset

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULKDATA = "bulkdata/"
PIXEL_DATA_KEY = "7FE00010"
#: ICC Profile (0028,2000), PS3.3 §C.11.15: the binary value clients that build datasets from the metadata alone
#: (wsidicom) need, so it goes inline up to the configured size.
ICC_PROFILE = 0x00282000
#: Any other binary value goes inline only this small (less than the request its BulkDataURI would cost): an
#: annotation's coordinates (PS3.3 §C.37.1.2, megabytes) stay out of every metadata answer that lists them.
SMALL_BINARY = 1024

JsonDict = dict[str, Any]


def dataset_to_json(dataset: Dataset, base: int, inline_bytes: int = 0) -> tuple[JsonDict, dict[str, tuple[int, int]]]:
    """DICOM JSON of ``dataset`` and the stored (offset, length) of each bulk value by tag path.

    ``base`` is the stored-file offset pydicom's ``value_tell`` positions count from. An ICC
    profile of at most ``inline_bytes`` goes in as ``InlineBinary`` (PS3.18 §F.2.7), so clients
    that build datasets from the metadata alone (wsidicom) get it; other binary values only up to
    :data:`SMALL_BINARY` (and ``inline_bytes``). Inline values' byte ranges are kept all the same,
    so the bulkdata resource serves them too.
    """
    bulk: dict[str, tuple[int, int]] = {}
    return _convert(dataset, "", base, bulk, inline_bytes), bulk


def _convert(dataset: Dataset, prefix: str, base: int, bulk: dict[str, tuple[int, int]], inline: int) -> JsonDict:
    out: JsonDict = {}
    for tag in sorted(dataset.keys()):
        if tag.element == 0:
            continue
        raw = dataset.get_item(tag)
        key = f"{tag:08X}"
        try:
            element = dataset[tag]
        except (ValueError, TypeError, OverflowError, KeyError, BytesLengthException) as exc:
            # BytesLengthException: a binary number value whose length is no multiple of its size (an FD of 4 bytes)
            raise InvalidDataset(f"data element {tag} has an invalid value: {exc}") from exc
        if element.VR == "SQ":
            # pydicom parses a defined-length sequence from its own value bytes: positions inside
            # count from that value; an undefined-length one is read in place.
            inner = base + raw.value_tell if isinstance(raw, RawDataElement) else base
            items = [_convert(item, f"{prefix}{key}.{i}.", inner, bulk, inline) for i, item in enumerate(element.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif element.VR in BULK_VRS and isinstance(raw, RawDataElement) and raw.length:
            path = prefix + key
            bulk[path] = (base + raw.value_tell, raw.length)
            limit = inline if tag == ICC_PROFILE else min(inline, SMALL_BINARY)
            if raw.length <= limit and isinstance(raw.value, bytes):
                out[key] = {"vr": element.VR, "InlineBinary": base64.b64encode(raw.value).decode()}
            else:
                out[key] = {"vr": element.VR, "BulkDataURI": BULKDATA + path}
        else:
            try:
                out[key] = element.to_json_dict(None, 0x7FFFFFFF)
            except (ValueError, TypeError, OverflowError) as exc:  # an IS of 'abc', a DS of '1.2.3'
                raise InvalidDataset(f"{element.keyword or 'data element'} {tag} has an invalid value: "
                                     f"{exc}") from exc
            if any(isinstance(v, float) and not math.isfinite(v) for v in out[key].get("Value", ())):
                # JSON numbers (RFC 8259 §6) have no NaN or infinity, so no DICOM JSON answer could carry it.
                raise InvalidDataset(f"{element.keyword or 'data element'} {tag} holds NaN or an infinite number, "
                                     "which DICOM JSON cannot carry")
    return out
