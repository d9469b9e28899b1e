"""The vendors' official Python SDKs driven against the fakes: if fal's and Replicate's own clients
can submit, poll, fetch and cancel there, the fakes speak the protocols real clients expect."""

from __future__ import annotations

import fal_client
import fal_client.client
import pytest
import replicate

from tests.fakes.fake_media import FAL_KEY, REPLICATE_TOKEN, FakeMediaUpstream

FAL_MODEL = "fal-ai/kling-video/v2.1/standard/text-to-video"


def test_fal_client_submits_polls_fetches_and_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMediaUpstream("fal") as fake:
        # the SDK builds https://queue.fal.run/... URLs; point that base at the fake
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", fake.base_url + "/")
        client = fal_client.SyncClient(key=FAL_KEY)
        handle = client.submit(FAL_MODEL, {"prompt": "a lighthouse", "duration": "5"})
        assert isinstance(handle.status(with_logs=True), fal_client.Queued)
        running = handle.status(with_logs=True)
        assert isinstance(running, fal_client.InProgress) and "%" in running.logs[-1]["message"]
        result = handle.get()
        assert result["video"]["content_type"] == "video/mp4" and result["video"]["url"].startswith(fake.base_url)
        fake.configure(hold=True)
        second = client.submit(FAL_MODEL, {"prompt": "stop me"})
        second.status()
        second.cancel()
        assert fake.state.jobs[second.request_id].canceled
        with pytest.raises(fal_client.client.FalClientError):
            fal_client.SyncClient(key="nope:nope").submit(FAL_MODEL, {"prompt": "p"})


def test_replicate_client_creates_reloads_and_cancels() -> None:
    with FakeMediaUpstream("replicate") as fake:
        client = replicate.Client(api_token=REPLICATE_TOKEN, base_url=fake.base_url)
        prediction = client.predictions.create(model="wan-video/wan-2.2-t2v-fast", input={"prompt": "a fox"})
        assert prediction.status == "starting"
        prediction.reload()
        assert prediction.status == "starting"  # the first look: still queued
        prediction.reload()
        assert prediction.status == "processing" and "%" in (prediction.logs or "")
        prediction.reload()
        assert prediction.status == "succeeded" and str(prediction.output).startswith(fake.base_url)
        fake.configure(hold=True)
        held = client.predictions.create(model="wan-video/wan-2.2-t2v-fast", input={"prompt": "stop me"})
        held.cancel()
        assert client.predictions.get(held.id).status == "canceled"
        with pytest.raises(replicate.exceptions.ReplicateError):
            replicate.Client(api_token="r8_wrong", base_url=fake.base_url).predictions.create(
                model="wan-video/wan-2.2-t2v-fast", input={"prompt": "p"})
