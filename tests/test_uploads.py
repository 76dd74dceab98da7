"""The upload-session use case in-process against Azurite: block plans and the cleanup of expired sessions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import httpx
import pytest

from dicomweb import jobs, uploads
from dicomweb.config import MIB, Settings
from dicomweb.errors import BadRequest, NotFound
from dicomweb.service import Service
from dicomweb.storage.clients import queue_consumer
from tests.conftest import fresh_settings


def test_block_plans_stay_within_blob_limits() -> None:
    assert uploads.plan_block_size(10, 8 * MIB) == 8 * MIB
    assert uploads.plan_block_size(4 * 1024 * MIB, 8 * MIB) == 8 * MIB
    huge = 1024 * 1024 * MIB  # 1 TiB: 8 MiB blocks would be 131,072 of them
    size = uploads.plan_block_size(huge, 8 * MIB)
    assert size % MIB == 0 and huge / size <= uploads.MAX_BLOCKS
    assert uploads.wire_block_id(7) == "MDAwMDA3" and len({uploads.wire_block_id(i) for i in (0, 49_999)}) == 2


def test_sessions_expire_and_cleanup_removes_them_with_their_blocks(emulators: dict[str, str]) -> None:
    settings = Settings.from_env({**fresh_settings(emulators), "DICOMWEB_UPLOAD_SESSION_SECONDS": "2"})

    async def scenario() -> None:
        service = await Service.create(settings)
        try:
            with pytest.raises(BadRequest):
                await uploads.create(service, -1, None, "oid-a")
            expiring = await uploads.create(service, 100, None, "oid-a")
            description = await uploads.describe(service, expiring, "http://dicomweb.test")
            block = description["blocks"][0]
            async with httpx.AsyncClient() as client:
                put = await client.put(f"{description['uploadUrl']}&comp=block&blockid={block['id']}", content=b"1" * 100)
            assert put.status_code == 201
            assert (await service.blobs.staging.blocks(expiring.data))[1] == {uploads.block_id(0): 100}
            time.sleep(2.5)
            lasting = await uploads.create(service, 100, None, "oid-a")
            with pytest.raises(NotFound):
                await uploads.load(service, expiring.id)
            assert await uploads.cleanup(service) == 1
            assert (await uploads.load(service, lasting.id)).status == uploads.OPEN  # only a job was sent
            consumer = queue_consumer(settings, settings.jobs_queue)
            try:
                (delivery,) = await consumer.receive(32, 30)
                assert json.loads(delivery.content) == {"kind": uploads.EXPIRE, "actor": {"id": "system"},
                                                        "session": expiring.id}
                await jobs.run(service, json.loads(delivery.content), delivery.dequeue_count)
                await consumer.complete(delivery)
            finally:
                await consumer.close()
            assert await service.blobs.staging.blocks(expiring.data) == ({}, {})
            assert [name async for name in service.blobs.staging.list_records(uploads.SESSIONS)] == [
                lasting.record_name]
            assert (await uploads.load(service, lasting.id)).status == uploads.OPEN
        finally:
            await service.close()

    asyncio.run(scenario())


def test_a_commit_whose_own_write_came_back_stale_still_sends_its_job(emulators: dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under storage pauses the SDK retries a write whose answer was lost; the retry then fails on the etag the
    first try changed. The commit took that for another commit's work and sent no job: the upload stayed
    ingesting forever (found by the fault test)."""
    settings = Settings.from_env({**fresh_settings(emulators), "DICOMWEB_COMMIT_WAIT_SECONDS": "1"})
    sealed = uploads._seal

    async def seal_and_lose_the_answer(service: Service, session: uploads.Session) -> None:
        await sealed(service, session)
        landed = dataclasses.replace(session, status=uploads.INGESTING)
        await uploads._save(service, landed)  # the write that landed, its answer lost

    monkeypatch.setattr(uploads, "_seal", seal_and_lose_the_answer)

    async def scenario() -> None:
        service = await Service.create(settings)
        consumer = queue_consumer(settings, settings.jobs_queue)
        try:
            session = await uploads.create(service, 100, None, "oid-a")
            block = (await uploads.describe(service, session, "http://dicomweb.test"))["blocks"][0]
            async with httpx.AsyncClient() as client:
                url = (await uploads.describe(service, session, "http://dicomweb.test"))["uploadUrl"]
                assert (await client.put(f"{url}&comp=block&blockid={block['id']}", content=b"1" * 100)).status_code == 201
            assert (await uploads.commit(service, session.id, "oid-a", "http://dicomweb.test")).status == uploads.INGESTING
            sent = [json.loads(d.content) for d in await consumer.receive(32, 30)]
            assert {"kind": uploads.INGEST, "session": session.id} in [
                {k: v for k, v in body.items() if k in ("kind", "session")} for body in sent]
        finally:
            await consumer.close()
            await service.close()

    asyncio.run(scenario())
