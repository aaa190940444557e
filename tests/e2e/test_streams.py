"""Streams through mesh (mesh/proxy/streams.py) to a real built-in runtime: tritonclient's streaming API against a
"tokens" model, the stream as in-flight use, a client's cancel reaching the runtime, a runtime dying mid-stream,
and the REST generate extension (generate, generate_stream as server-sent events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from harness.serve import BUILTIN_TYPES, InProcessRuntime, start_runtime
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.placement.records import ModelRecord
from mesh.router import Router

BUILTIN = (*BUILTIN_TYPES, "tokens")
PROMPT = "the quick brown fox jumps over the lazy dog"
WAIT_S = 10.0


class Mesh:
    def __init__(self, router: Router, grpc_port: int, rest_port: int, runtime: InProcessRuntime) -> None:
        self.router, self.runtime = router, runtime
        self.address, self.rest = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"

    async def register(self, model_id: str, tmp_path: Path, **config: object) -> None:
        path = tmp_path / f"{model_id}.json"
        path.write_text(json.dumps(config))
        await self.router.registry.register(ModelRecord(model_id, "tokens", str(path)))

    def in_flight(self) -> set[str]:
        return self.router.manager.copies.models_in_flight()

    async def until(self, condition: object, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    router = Router(Settings(grpc_port=0, rest_port=0, metrics_port=-1, kv="memory://"))
    ports = await router.start()
    runtime = await start_runtime("rt-a")
    await router.add_instance("rt-a", runtime.endpoint, BUILTIN)
    try:
        yield Mesh(router, ports.grpc, ports.rest, runtime)
    finally:
        await router.stop(grace=0)
        await runtime.stop()


def _prompt(model: str, text: str = PROMPT) -> dict:
    tensor = triton_aio.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return {"model_name": model, "inputs": [tensor], "request_id": "r1"}


async def _requests(*items: dict) -> AsyncIterator[dict]:
    for item in items:
        yield item


async def test_tritonclients_stream_gets_every_token_through_mesh(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.register("tokens", tmp_path)
    client = triton_aio.InferenceServerClient(mesh.address)
    try:
        tokens = []
        async for result, error in client.stream_infer(_requests(_prompt("tokens"), _prompt("tokens", "two words"))):
            assert error is None, error
            tokens.append(result.as_numpy("text_output")[0].decode())
    finally:
        await client.close()
    assert "".join(tokens) == PROMPT + "two words"
    assert len(tokens) == len(PROMPT.split()) + 2
    # The stream is one invocation of the runtime, with the bytes of all its messages each way.
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(generate_latest(mesh.router.metrics.collectors).decode())
        for s in family.samples
        if s.labels.get("method") == "inference.GRPCInferenceService/ModelStreamInfer"
    }
    assert samples["modelmesh_invoke_model_milliseconds_count"] == 1
    assert samples["modelmesh_request_size_bytes_sum"] > 2 * len("two words")
    assert samples["modelmesh_response_size_bytes_sum"] > len(PROMPT)


async def test_a_stream_is_in_flight_use_and_a_cancel_reaches_the_runtime(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.register("slow", tmp_path, delay_ms=50, max_tokens=1000)
    long_prompt = " ".join(["word"] * 1000)
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            long_prompt.encode()
        )
        await stream.write(request)
        first = await stream.read()
        assert first.infer_response.raw_output_contents or first.infer_response.outputs
        assert "slow" in mesh.in_flight()  # the open stream holds its copy: never evicted, drained before unload
        stream.cancel()
    await mesh.until(lambda: "slow" not in mesh.in_flight(), "the cancelled stream still holds its copy")


async def test_a_runtime_dying_mid_stream_ends_it_unavailable_naming_the_instance(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.register("slow", tmp_path, delay_ms=50, max_tokens=1000)
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            b" ".join([b"word"] * 1000)
        )
        await stream.write(request)
        await stream.read()
        await mesh.runtime.stop()  # the runtime dies under the stream
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                message = await stream.read()
                assert message is not grpc.aio.EOF, "the stream ended as if complete"
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "rt-a" in (ended.value.details() or "") and "slow" in (ended.value.details() or "")


async def test_a_model_that_does_not_stream_says_so_in_the_stream(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "upper.json").write_text(json.dumps({"transform": "upper"}))
    await mesh.router.registry.register(ModelRecord("upper", "text", str(tmp_path / "upper.json")))
    client = triton_aio.InferenceServerClient(mesh.address)
    try:
        answers = [answer async for answer in client.stream_infer(_requests(_prompt("upper")))]
    finally:
        await client.close()
    [(result, error)] = answers
    assert result is None and "does not stream" in str(error)


async def test_rest_generate_and_generate_stream(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.register("tokens", tmp_path)
    body = {"text_input": "hello streaming world", "parameters": {"max_tokens": 8}}
    async with httpx.AsyncClient(base_url=mesh.rest, trust_env=False) as http:
        whole = await http.post("/v2/models/tokens/generate", json=body, timeout=30)
        assert whole.status_code == 200, whole.text
        assert whole.json()["text_output"] == "hello streaming world" and whole.json()["model_name"] == "tokens"

        events = []
        async with http.stream("POST", "/v2/models/tokens/generate_stream", json=body, timeout=30) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            async for line in streamed.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
        assert [e["text_output"] for e in events] == ["hello ", "streaming ", "world"]

        refused = await http.post("/v2/models/tokens/generate", json={"text_input": 5}, timeout=30)
        assert refused.status_code == 400 and "text_input" in refused.json()["error"]
