"""Creates what the Bicep creates in Azure, for the local stack: blob containers, queues, Cosmos database and container.

The service itself never makes these control-plane calls: in Azure the infrastructure
(``infra/``) owns the resources, and a missing one answers 503 naming it. Locally the
emulators start empty (and the Cosmos server loses everything when it restarts), so
:class:`dicomweb.local.emulators.Emulators` calls :func:`provision` after every start.
"""

from __future__ import annotations

import asyncio
import os
from typing import Mapping

from dicomweb.config import Settings
from dicomweb.storage.clients import blob_store, cosmos_stores, event_queue, inbox_queue, job_queue


async def provision_async(settings: Settings, index_only: bool = False) -> None:
    """Create the resources ``settings`` name where missing (idempotent); with ``index_only``, only Cosmos's."""
    index, _, _ = cosmos_stores(settings)
    try:
        await index.provision()
    finally:
        await index.close()
    if index_only:
        return
    blobs, queues = blob_store(settings), [job_queue(settings), event_queue(settings), inbox_queue(settings)]
    try:
        await blobs.provision(settings.blob_events_queue, settings.inbox_queue)
        for queue in queues:
            await queue.provision()
    finally:
        await blobs.close()
        for queue in queues:
            await queue.close()


def provision(env: Mapping[str, str], index_only: bool = False) -> None:
    """:func:`provision_async` for the settings in ``env`` (not from a running event loop)."""
    asyncio.run(provision_async(Settings.from_env(env), index_only))


if __name__ == "__main__":  # `python -m dicomweb.local.provision`: for the settings in this environment
    provision(os.environ)
