"""Settings, read from environment variables in this one place.

The same ``DICOMWEB_*`` names appear in ``local.settings.json.example`` and in the
Bicep app settings; a test keeps the three in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from dicomweb.dicom.part10 import Limits

MIB = 1024 * 1024
#: Blob storage list prices per GB and month (Azure, LRS, East US, pay as you go), by access tier.
DEFAULT_PRICES = (("Hot", 0.0184), ("Cool", 0.01), ("Cold", 0.0036), ("Archive", 0.00099))


def _names(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in (env.get(name, "") or default).split(",") if n.strip())


def _bool(env: Mapping[str, str], name: str) -> bool:
    """``true`` or ``false`` (empty: false); anything else is refused, so a typo never turns a switch on."""
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    return raw == "true"


def _prices(env: Mapping[str, str], name: str) -> tuple[tuple[str, float], ...]:
    """``Hot=0.0184,Cool=0.01,...``: a price for each of the four tiers (no more, no fewer)."""
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_PRICES
    prices: dict[str, float] = {}
    for item in raw.split(","):
        tier, _, price = item.partition("=")
        prices[tier.strip()] = float(price)
    if set(prices) != {tier for tier, _ in DEFAULT_PRICES} or min(prices.values()) < 0:
        raise ValueError(f"{name} gives a price of at least 0 for each of Hot, Cool, Cold and Archive, not {raw!r}")
    return tuple((tier, prices[tier]) for tier, _ in DEFAULT_PRICES)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset); anything else refuses to start, as a bad number does."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    storage_connection_string: str = ""
    storage_account_url: str = ""
    instance_container: str = "dicom-instances"
    sidecar_container: str = "dicom-sidecars"
    staging_container: str = "dicom-staging"
    queue_connection_string: str = ""
    queue_service_url: str = ""
    jobs_queue: str = "dicomweb-jobs"
    blob_events_queue: str = "dicomweb-blob-events"
    #: Where scanner files are dropped to be converted (dicomweb.inbox), and the queue of its BlobCreated events.
    inbox_container: str = "dicom-inbox"
    inbox_queue: str = "dicomweb-inbox"
    #: Largest scanner file the inbox converts (it is downloaded to local disk, and converted beside it).
    inbox_max_bytes: int = 8 * 1024 * MIB
    #: What becomes of an inbox file once handled: "move" (under done/ or failed/) or "delete" (a stored one;
    #: a failed one is always moved under failed/).
    inbox_sources: str = "move"
    cosmos_connection_string: str = ""
    cosmos_endpoint: str = ""
    cosmos_database: str = "dicomweb"
    cosmos_container: str = "index"
    public_base_url: str = ""
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    auth_issuer: str = ""
    auth_audiences: tuple[str, ...] = ()
    auth_disabled: bool = False
    reader_roles: tuple[str, ...] = ("DICOM.Reader", "dicom.read")
    writer_roles: tuple[str, ...] = ("DICOM.Writer", "dicom.write")
    owner_roles: tuple[str, ...] = ("DICOM.Owner", "dicom.owner")
    block_size: int = 8 * MIB
    upload_concurrency: int = 4
    max_header_bytes: int = 64 * MIB
    frame_index_cache_mb: int = 64
    frame_cache_mb: int = 64
    frame_cache_seconds: int = 30
    metadata_cache_mb: int = 48
    max_request_bytes: int = 100 * MIB
    upload_sas_seconds: int = 900
    upload_session_seconds: int = 86400
    commit_wait_seconds: int = 200
    hot_pin_bytes: int = 256 * MIB
    changefeed_gap_seconds: int = 10
    max_frames_per_request: int = 1000
    storage_timeout_seconds: int = 20
    max_elements: int = 2_000_000
    max_sequence_depth: int = 32
    max_frames: int = 1_000_000
    max_parts_per_request: int = 1000
    max_inline_binary: int = 256 * 1024
    max_rendered_pixels: int = 4096 * 4096
    max_rendered_frames: int = 1024
    #: List prices per GB and month by access tier, for ``dicomweb usage`` (LRS, a US region, late 2026).
    prices_per_gb_month: tuple[tuple[str, float], ...] = DEFAULT_PRICES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        return cls(
            storage_connection_string=env.get("DICOMWEB_STORAGE_CONNECTION_STRING", ""),
            storage_account_url=env.get("DICOMWEB_STORAGE_ACCOUNT_URL", ""),
            instance_container=env.get("DICOMWEB_INSTANCE_CONTAINER", "") or cls.instance_container,
            sidecar_container=env.get("DICOMWEB_SIDECAR_CONTAINER", "") or cls.sidecar_container,
            staging_container=env.get("DICOMWEB_STAGING_CONTAINER", "") or cls.staging_container,
            queue_connection_string=env.get("DICOMWEB_QUEUES", ""),
            queue_service_url=env.get("DICOMWEB_QUEUES__queueServiceUri", ""),
            jobs_queue=env.get("DICOMWEB_JOBS_QUEUE", "") or cls.jobs_queue,
            blob_events_queue=env.get("DICOMWEB_BLOB_EVENTS_QUEUE", "") or cls.blob_events_queue,
            inbox_container=env.get("DICOMWEB_INBOX_CONTAINER", "") or cls.inbox_container,
            inbox_queue=env.get("DICOMWEB_INBOX_QUEUE", "") or cls.inbox_queue,
            inbox_max_bytes=_int(env, "DICOMWEB_INBOX_MAX_GB", 8) * 1024 * MIB,
            inbox_sources=_choice(env, "DICOMWEB_INBOX_SOURCES", ("move", "delete")),
            cosmos_connection_string=env.get("DICOMWEB_COSMOS_CONNECTION_STRING", ""),
            cosmos_endpoint=env.get("DICOMWEB_COSMOS_ENDPOINT", ""),
            cosmos_database=env.get("DICOMWEB_COSMOS_DATABASE", "") or cls.cosmos_database,
            cosmos_container=env.get("DICOMWEB_COSMOS_CONTAINER", "") or cls.cosmos_container,
            public_base_url=env.get("DICOMWEB_PUBLIC_BASE_URL", "").rstrip("/"),
            cors_origins=_names(env, "DICOMWEB_CORS_ORIGINS", ""),
            trusted_proxies=_names(env, "DICOMWEB_TRUSTED_PROXIES", ""),
            auth_issuer=env.get("DICOMWEB_AUTH_ISSUER", "").strip(),
            auth_audiences=_names(env, "DICOMWEB_AUTH_AUDIENCE", ""),
            auth_disabled=_bool(env, "DICOMWEB_AUTH_DISABLED"),
            reader_roles=_names(env, "DICOMWEB_READER_ROLES", ",".join(cls.reader_roles)),
            writer_roles=_names(env, "DICOMWEB_WRITER_ROLES", ",".join(cls.writer_roles)),
            owner_roles=_names(env, "DICOMWEB_OWNER_ROLES", ",".join(cls.owner_roles)),
            block_size=_int(env, "DICOMWEB_BLOCK_SIZE_MB", 8) * MIB,
            upload_concurrency=_int(env, "DICOMWEB_UPLOAD_CONCURRENCY", 4),
            max_header_bytes=_int(env, "DICOMWEB_MAX_HEADER_MB", 64) * MIB,
            frame_index_cache_mb=_int(env, "DICOMWEB_FRAME_INDEX_CACHE_MB", 64),
            frame_cache_mb=_int(env, "DICOMWEB_FRAME_CACHE_MB", 64),
            frame_cache_seconds=_int(env, "DICOMWEB_FRAME_CACHE_SECONDS", 30),
            metadata_cache_mb=_int(env, "DICOMWEB_METADATA_CACHE_MB", 48),
            max_request_bytes=_int(env, "DICOMWEB_MAX_REQUEST_MB", 100) * MIB,
            upload_sas_seconds=_int(env, "DICOMWEB_UPLOAD_SAS_SECONDS", 900),
            upload_session_seconds=_int(env, "DICOMWEB_UPLOAD_SESSION_SECONDS", 86400),
            commit_wait_seconds=_int(env, "DICOMWEB_COMMIT_WAIT_SECONDS", 200),
            hot_pin_bytes=_int(env, "DICOMWEB_HOT_PIN_MB", 256) * MIB,
            changefeed_gap_seconds=_int(env, "DICOMWEB_CHANGEFEED_GAP_SECONDS", 10),
            max_frames_per_request=_int(env, "DICOMWEB_MAX_FRAMES_PER_REQUEST", 1000),
            storage_timeout_seconds=_int(env, "DICOMWEB_STORAGE_TIMEOUT_SECONDS", 20),
            max_elements=_int(env, "DICOMWEB_MAX_ELEMENTS", 2_000_000),
            max_sequence_depth=_int(env, "DICOMWEB_MAX_SEQUENCE_DEPTH", 32),
            max_frames=_int(env, "DICOMWEB_MAX_FRAMES", 1_000_000),
            max_parts_per_request=_int(env, "DICOMWEB_MAX_PARTS_PER_REQUEST", 1000),
            max_inline_binary=_int(env, "DICOMWEB_MAX_INLINE_BINARY_KB", 256) * 1024,
            max_rendered_pixels=_int(env, "DICOMWEB_MAX_RENDERED_PIXELS", 4096 * 4096),
            max_rendered_frames=_int(env, "DICOMWEB_MAX_RENDERED_FRAMES", 1024),
            prices_per_gb_month=_prices(env, "DICOMWEB_PRICES_PER_GB_MONTH"),
        )

    @property
    def limits(self) -> Limits:
        """What the Part 10 parser lets one instance hold."""
        from dicomweb.dicom.part10 import Limits  # the parser's module brings pydicom: not for every command

        return Limits(self.max_header_bytes, self.max_elements, self.max_sequence_depth, self.max_frames)

    @property
    def has_storage(self) -> bool:
        """True when Blob, Queue and Cosmos are configured (``serve`` starts emulators otherwise)."""
        return bool(
            (self.storage_connection_string or self.storage_account_url)
            and (self.queue_connection_string or self.queue_service_url)
            and (self.cosmos_connection_string or self.cosmos_endpoint)
        )


#: Names of every setting read above, for the parity test with local settings and Bicep.
SETTING_NAMES = (
    "DICOMWEB_STORAGE_CONNECTION_STRING",
    "DICOMWEB_STORAGE_ACCOUNT_URL",
    "DICOMWEB_INSTANCE_CONTAINER",
    "DICOMWEB_SIDECAR_CONTAINER",
    "DICOMWEB_STAGING_CONTAINER",
    "DICOMWEB_QUEUES",
    "DICOMWEB_QUEUES__queueServiceUri",
    "DICOMWEB_JOBS_QUEUE",
    "DICOMWEB_BLOB_EVENTS_QUEUE",
    "DICOMWEB_INBOX_CONTAINER",
    "DICOMWEB_INBOX_QUEUE",
    "DICOMWEB_INBOX_MAX_GB",
    "DICOMWEB_INBOX_SOURCES",
    "DICOMWEB_COSMOS_CONNECTION_STRING",
    "DICOMWEB_COSMOS_ENDPOINT",
    "DICOMWEB_COSMOS_DATABASE",
    "DICOMWEB_COSMOS_CONTAINER",
    "DICOMWEB_PUBLIC_BASE_URL",
    "DICOMWEB_CORS_ORIGINS",
    "DICOMWEB_TRUSTED_PROXIES",
    "DICOMWEB_AUTH_ISSUER",
    "DICOMWEB_AUTH_AUDIENCE",
    "DICOMWEB_AUTH_DISABLED",
    "DICOMWEB_READER_ROLES",
    "DICOMWEB_WRITER_ROLES",
    "DICOMWEB_OWNER_ROLES",
    "DICOMWEB_BLOCK_SIZE_MB",
    "DICOMWEB_UPLOAD_CONCURRENCY",
    "DICOMWEB_MAX_HEADER_MB",
    "DICOMWEB_FRAME_INDEX_CACHE_MB",
    "DICOMWEB_FRAME_CACHE_MB",
    "DICOMWEB_FRAME_CACHE_SECONDS",
    "DICOMWEB_METADATA_CACHE_MB",
    "DICOMWEB_MAX_REQUEST_MB",
    "DICOMWEB_UPLOAD_SAS_SECONDS",
    "DICOMWEB_UPLOAD_SESSION_SECONDS",
    "DICOMWEB_COMMIT_WAIT_SECONDS",
    "DICOMWEB_HOT_PIN_MB",
    "DICOMWEB_CHANGEFEED_GAP_SECONDS",
    "DICOMWEB_MAX_FRAMES_PER_REQUEST",
    "DICOMWEB_STORAGE_TIMEOUT_SECONDS",
    "DICOMWEB_MAX_ELEMENTS",
    "DICOMWEB_MAX_SEQUENCE_DEPTH",
    "DICOMWEB_MAX_FRAMES",
    "DICOMWEB_MAX_PARTS_PER_REQUEST",
    "DICOMWEB_MAX_INLINE_BINARY_KB",
    "DICOMWEB_MAX_RENDERED_PIXELS",
    "DICOMWEB_MAX_RENDERED_FRAMES",
    "DICOMWEB_PRICES_PER_GB_MONTH",
)
