"""Application Insights settings (``dicomweb.storage.monitor``): identity-based ingestion as the Bicep sets it up.

The export itself is tested end to end in ``tests/test_audit.py`` against a local ingestion endpoint.
"""

from __future__ import annotations

from azure.identity import ManagedIdentityCredential

from dicomweb.storage import monitor
from tests.test_infra import _app_settings


def test_the_bicep_ingestion_setting_selects_the_apps_managed_identity() -> None:
    written = _app_settings()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    value = written.text if hasattr(written, "text") else str(written)
    env = {"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": value.strip("'").replace("${identityClientId}", "client-1")}
    credential = monitor._credential(env)
    assert isinstance(credential, ManagedIdentityCredential)
    assert monitor._credential({}) is None
    assert monitor._credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=None"}) is None


def test_nothing_is_exported_without_a_connection_string() -> None:
    assert monitor.configure({}) is False
