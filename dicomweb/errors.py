"""One exception base for every DICOMweb failure.

Each subclass carries the HTTP status it maps to and, for STOW, the DICOM failure
reason (PS3.18 §10.5.3, Table 10.5.3-1 and the Azure DICOM service's reason codes).
The API layer turns any :class:`DicomWebError` into a response in one place.
"""

from __future__ import annotations

# Failure reasons (0008,1197) used in FailedSOPSequence.
REASON_PROCESSING_FAILURE = 0x0110  # 272
REASON_VALIDATION_FAILED = 0xA900  # 43264
REASON_STUDY_MISMATCH = 0xA901  # 43265
REASON_DUPLICATE = 0xB00E  # 45070


class DicomWebError(Exception):
    """Base of all service errors: an HTTP status, a message and an optional failure reason."""

    status: int = 500
    reason: int = REASON_PROCESSING_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DicomWebError):
    """The request itself is malformed (PS3.18 §8.2: 400)."""

    status = 400
    reason = REASON_VALIDATION_FAILED


class InvalidDataset(BadRequest):
    """A STOW part is not a valid DICOM instance (reason 43264)."""


class StudyMismatch(BadRequest):
    """A STOW part belongs to another study than the one in the URL (reason 43265)."""

    status = 409
    reason = REASON_STUDY_MISMATCH


class Duplicate(DicomWebError):
    """The SOP instance is already stored (reason 45070)."""

    status = 409
    reason = REASON_DUPLICATE


class StoredElsewhere(Duplicate):
    """The SOP Instance UID is already stored under another study or series (reason 45070, as the Azure
    DICOM service answers): one SOP Instance UID names one instance store-wide; PUT moves it."""


class Unauthorized(DicomWebError):
    """No valid bearer token where the service requires one (RFC 6750 §3: 401 with WWW-Authenticate)."""

    status = 401


class Forbidden(DicomWebError):
    """A valid token whose roles do not grant what the route needs (RFC 6750 §3.1: 403, insufficient_scope)."""

    status = 403


class NotConfigured(DicomWebError):
    """The settings do not let the service serve data (say, authentication is neither configured nor
    explicitly disabled): it fails closed (503).

    Retrying does not help, so unlike :class:`StorageFailure` it carries no Retry-After.
    """

    status = 503


class NotFound(DicomWebError):
    """The study, series, instance, frame or bulk data does not exist."""

    status = 404


class MethodNotAllowed(DicomWebError):
    """The resource exists, but not with this method (RFC 9110 §15.5.6: 405, with the methods it allows)."""

    status = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class RangeNotSatisfiable(DicomWebError):
    """A byte range that starts beyond the value (RFC 9110 §15.5.17: 416, with the value's length)."""

    status = 416

    def __init__(self, message: str, length: int) -> None:
        super().__init__(message)
        self.length = length


class NotAcceptable(DicomWebError):
    """No representation the client accepts can be produced (PS3.18 §8.3.3.1: 406)."""

    status = 406


class UndecodableFrame(DicomWebError):
    """A stored frame is not decoded: its codestream header is malformed or declares another image than the
    instance's Image Pixel attributes (say 30000×30000 pixels in a 256×256 instance).

    Not 406: no other representation the client could ask for avoids it (only the stored bytes, served as
    they are). The stored data contradict themselves, a conflict with the resource's state that storing a
    corrected instance resolves (409).
    """

    status = 409


class UnsupportedMediaType(DicomWebError):
    """The request body has a media type the resource does not take."""

    status = 415
    reason = REASON_VALIDATION_FAILED


class PayloadTooLarge(DicomWebError):
    """A request body beyond the configured limit (large instances go through upload sessions)."""

    status = 413
    reason = REASON_VALIDATION_FAILED


class StateConflict(DicomWebError):
    """The resource is not in a state that allows the request (an upload missing blocks, or still ingesting)."""

    status = 409


class ConcurrentChange(DicomWebError):
    """A conditional write lost a race with another writer: the client may simply try again (409, 272).

    The storage adapters raise subclasses of it; the use cases catch them to read again and
    retry, so one escapes only when retrying could not settle the race.
    """

    status = 409


class Archived(DicomWebError):
    """The bytes sit in the Archive tier (InstanceAvailability OFFLINE, PS3.3 §C.4.23.1.1): reading them waits
    for a rehydration someone must ask for, so retrying alone never helps (409, with the rehydration resource).
    """

    status = 409

    def __init__(self, message: str, instances: int = 1) -> None:
        super().__init__(message)
        #: How many of the addressed instances are offline.
        self.instances = instances


class Rehydrating(Archived):
    """The bytes are being rehydrated from the Archive tier (NEARLINE): they come back by themselves, so the
    client may retry later (503 with Retry-After: a High-priority rehydration often takes under an hour,
    a Standard one up to 15 hours)."""

    status = 503

    def __init__(self, message: str, retry_after: int, instances: int = 1) -> None:
        super().__init__(message, instances)
        self.retry_after = retry_after


class StorageFailure(DicomWebError):
    """Blob Storage or Cosmos DB failed, timed out or throttled: the client may try again (503, Retry-After)."""

    status = 503
    reason = REASON_PROCESSING_FAILURE

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DamagedInstance(StorageFailure):
    """A stored file does not match its frame offset record; the record is being rebuilt from the file (503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=30)
