"""Application Insights through OpenTelemetry (``azure-monitor-opentelemetry``), when it is configured.

Only the ``dicomweb`` logger tree is exported: the audit trail (:mod:`dicomweb.audit`) with
its fields as custom dimensions, and the service's warnings and errors. Library
instrumentations stay off: the Functions host already records requests, and tracing
every ranged read of a tile would cost more than it tells. The identity-based ingestion
that the Bicep sets up (``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``,
``Authorization=AAD``) is honoured with the app's managed identity.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from azure.identity import ManagedIdentityCredential

#: Library instrumentations the distro would enable by default.
_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")
_configured = False


def _credential(env: Mapping[str, str]) -> ManagedIdentityCredential | None:
    parts = dict(p.split("=", 1) for p in env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    return ManagedIdentityCredential(client_id=parts.get("ClientId") or None)


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Export the service's logs to Application Insights if a connection string is set (once per process)."""
    global _configured
    env = os.environ if env is None else env
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "")
    if _configured or not connection:
        return _configured
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(
        connection_string=connection, credential=_credential(env), logger_name="dicomweb",
        enable_live_metrics=False, enable_performance_counters=False,
        instrumentation_options={name: {"enabled": False} for name in _INSTRUMENTATIONS},
    )
    logging.getLogger("dicomweb").setLevel(logging.INFO)
    _configured = True
    return True
