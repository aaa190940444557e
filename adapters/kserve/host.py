"""The model server for custom models written with the KServe Python SDK: KServe's own data plane, REST app and
gRPC servicer, over a model repository that loads a model from the folder its adapter names.

It runs in its own venv, with the real `kserve` package (`python -m adapters.common.envs kserve`), as a script:
`python -P adapters/kserve/host.py --repository DIR --http-port N --grpc-port M`. It imports nothing of mesh's.

A model is a folder holding `model.py` (and whatever it reads). model.py defines one subclass of `kserve.Model`;
the host makes it with the model's id as its name (`cls(name)`), calls its `load()`, and serves it through KServe's
`DataPlane`: preprocess, predict and postprocess get KServe's `InferRequest` and the request's headers (gRPC
metadata), exactly as under `kserve.ModelServer`. The folder is imported as a package of its own
(`from . import helpers` works), so two models may both have a `helpers.py`.

The adapter names a model by writing `<repository>/<anything>/mesh-model.json` ({"name": id, "path": folder})
before it asks KServe's repository API to load the name (`POST /v2/repository/models/{name}/load`).

A transformer (a model whose predict is KServe's own, which calls a predictor over the network) has its
predictor's URL in that file too ("predictor_url"): the router's REST door, under a path naming the predictor
model, so the predictor is any model mesh serves, loaded on demand like the transformer.

Isolation: an exception in a model's load or handlers fails that load or that request, with its message, and no
other model notices. Models share this process: one that kills it (os._exit, a crash in native code) takes its
neighbours with it, and the adapter starts the host again and loads them again (adapters/kserve/server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

POINTER_FILE = "mesh-model.json"
MODEL_FILE = "model.py"

log = logging.getLogger("mesh.kserve.host")


def _flags() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="host.py", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="where the adapter writes mesh-model.json")
    parser.add_argument("--host", default="127.0.0.1", help="address the REST port (model management) binds")
    parser.add_argument("--grpc-host", help="address the gRPC port binds (default: --host); routers must reach it")
    parser.add_argument("--http-port", type=int, required=True, help="KServe's REST app: repository API, /metrics")
    parser.add_argument("--grpc-port", type=int, required=True, help="KServe's gRPC inference service")
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    args = parser.parse_args()
    # kserve.model_server parses sys.argv when imported: it must not see these flags.
    sys.argv = sys.argv[:1]
    return args


def _pointer(repository: Path, name: str) -> dict[str, str]:
    """The model's mesh-model.json: its folder ("path") and, for a transformer, where its predictor is
    ("predictor_url")."""
    for pointer in repository.glob(f"*/{POINTER_FILE}"):
        entry = json.loads(pointer.read_text(encoding="utf-8"))
        if entry.get("name") == name:
            return dict(entry)
    raise FileNotFoundError(f"no {POINTER_FILE} in {repository} names model {name!r}")


def _predictor_config(url: str) -> Any:
    """KServe's predictor settings for a transformer whose predictor is at `url` (the router's REST door and the
    path naming the predictor): the v2 REST protocol, TLS for https."""
    from kserve.constants.constants import PredictorProtocol
    from kserve.predictor_config import PredictorConfig

    scheme, _, host_and_path = url.partition("://")
    return PredictorConfig(host_and_path, PredictorProtocol.REST_V2.value, predictor_use_ssl=scheme == "https")


class _Package:
    """A model folder imported as a package named for the model alone, and forgotten again on unload."""

    def __init__(self, name: str, folder: Path, serial: int) -> None:
        self.prefix = f"mesh_custom_model_{serial}"
        self.folder = folder
        self.name = name

    def import_model_module(self) -> ModuleType:
        source = self.folder / MODEL_FILE
        if not source.is_file():
            raise FileNotFoundError(f"a custom model is a folder holding {MODEL_FILE}; {self.folder} has none")
        package = importlib.util.spec_from_file_location(
            self.prefix, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )
        assert package is not None and package.loader is not None
        package_module = importlib.util.module_from_spec(package)
        sys.modules[self.prefix] = package_module
        if (self.folder / "__init__.py").is_file():
            package.loader.exec_module(package_module)
        spec = importlib.util.spec_from_file_location(f"{self.prefix}.model", source)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    def forget(self) -> None:
        for module in [m for m in sys.modules if m == self.prefix or m.startswith(self.prefix + ".")]:
            del sys.modules[module]


def _model_class(module: ModuleType, model_base: type) -> type:
    """The one kserve.Model subclass model.py defines (classes it imports do not count)."""
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, model_base) and value.__module__ == module.__name__
    ]
    if len(classes) != 1:
        found = ", ".join(sorted(c.__name__ for c in classes)) or "none"
        raise TypeError(
            f"{MODEL_FILE} must define exactly one subclass of kserve.Model (found: {found}); import the others"
            " from a module beside it"
        )
    return classes[0]


def _predictor_arguments(model_class: type, predictor: Any) -> dict[str, object]:
    """What KServe's examples pass a transformer's constructor (`predictor_host`, `protocol`), for those it takes."""
    taken = inspect.signature(model_class).parameters
    if predictor is None:
        needed = taken.get("predictor_host")
        if needed is not None and needed.default is inspect.Parameter.empty:
            raise TypeError(
                f"{model_class.__name__} takes a predictor_host: register it with a model key naming its predictor,"
                ' {"predictor": "<model id>"}'
            )
        return {}
    offered = {
        "predictor_host": predictor.predictor_host,
        "protocol": predictor.predictor_protocol,
        "predictor_protocol": predictor.predictor_protocol,
        "predictor_use_ssl": predictor.predictor_use_ssl,
    }
    return {name: value for name, value in offered.items() if name in taken}


def _repository_class() -> type:
    import kserve
    from kserve.model_repository import ModelRepository

    class FolderRepository(ModelRepository):  # type: ignore[misc]
        """KServe's repository, loading a model from the folder its mesh-model.json names."""

        def __init__(self, repository: Path) -> None:
            super().__init__(str(repository))
            self._repository = repository
            self._packages: dict[str, _Package] = {}
            self._serial = 0
            self.predictors: dict[str, Any] = {}  # a transformer's name: its PredictorConfig

        def load_model(self, name: str) -> bool:  # KServe's startup scan; mesh loads each model on request
            return False

        async def load(self, name: str) -> bool:
            if name in self.models:
                return bool(await self.is_model_ready(name))
            self._serial += 1
            pointer = _pointer(self._repository, name)
            package = _Package(name, Path(pointer["path"]), self._serial)
            predictor = _predictor_config(pointer["predictor_url"]) if "predictor_url" in pointer else None
            try:
                model = await asyncio.to_thread(self._make, package, predictor)
            except BaseException:
                package.forget()
                raise
            self._packages[name] = package
            if predictor is not None:
                self.predictors[name] = predictor
            self.update(model)
            return bool(model.ready)

        @staticmethod
        def _make(package: _Package, predictor: Any) -> kserve.Model:
            model_class = _model_class(package.import_model_module(), kserve.Model)
            model = model_class(package.name, **_predictor_arguments(model_class, predictor))
            model.load()
            log.info("loaded custom model %s (%s from %s)", package.name, model_class.__name__, package.folder)
            return model

        def unload(self, name: str) -> None:
            super().unload(name)
            self.predictors.pop(name, None)
            package = self._packages.pop(name, None)
            if package is not None:
                package.forget()

    return FolderRepository


def _dataplane_class() -> type:
    from kserve import context
    from kserve.protocol.dataplane import DataPlane

    class TransformingDataPlane(DataPlane):  # type: ignore[misc]
        """KServe's data plane, with each model's own predictor: KServe keeps one per process (a transformer
        server has one model), in a context variable its Model.predict reads; set here for the request's task."""

        async def infer(self, model_name: str, request: object, headers: dict[str, str] | None = None) -> object:
            context.set_predictor_config(self._model_registry.predictors.get(model_name))
            return await super().infer(model_name, request, headers)

    return TransformingDataPlane


def _interceptor() -> object:
    """KServe's mapping of its errors to gRPC codes, but: an error of the model's own becomes INTERNAL with its type
    and message (KServe's says only "Internal server error"), so the client learns what went wrong; and a client's
    invalid input is not logged as the server's error."""
    import grpc
    import httpx
    from grpc_interceptor.exceptions import GrpcException
    from kserve import errors
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

    known = (
        errors.InferenceError, errors.InvalidInput, errors.UnsupportedProtocol, errors.ServerNotReady,
        errors.ServerNotLive, errors.ModelNotFound, errors.ModelNotReady, NotImplementedError, GrpcException,
    )  # fmt: skip

    # A transformer's predictor answered an HTTP error: its meaning, for the transformer's client. Never NOT_FOUND,
    # which the router reads as the transformer's copy being gone.
    predictor_codes = {
        400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.FAILED_PRECONDITION,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }  # fmt: skip

    class ModelErrorsToStatus(ExceptionToStatusInterceptor):  # type: ignore[misc]
        async def handle_exception(self, ex: Exception, request: object, context: object, method: str) -> None:
            if isinstance(ex, errors.InvalidInput):  # the client's mistake: KServe logs it at ERROR, with a traceback
                log.info("%s refused: %s", method, ex.reason)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)  # type: ignore[attr-defined]
            if isinstance(ex, httpx.HTTPStatusError):
                status = ex.response.status_code
                log.warning("%s: the predictor answered %d: %s", method, status, ex)
                code = predictor_codes.get(status, grpc.StatusCode.INTERNAL)
                await context.abort(code, f"the predictor answered {status}: {ex}")  # type: ignore[attr-defined]
            if isinstance(ex, httpx.TransportError):
                log.warning("%s: the predictor could not be reached: %r", method, ex)
                message = f"the predictor could not be reached: {type(ex).__name__}: {ex}"
                await context.abort(grpc.StatusCode.UNAVAILABLE, message)  # type: ignore[attr-defined]
            if isinstance(ex, known):
                await super().handle_exception(ex, request, context, method)
                return
            log.error("%s failed in the model's code", method, exc_info=ex)
            await context.abort(grpc.StatusCode.INTERNAL, f"the model raised {type(ex).__name__}: {ex}")  # type: ignore[attr-defined]

    return ModelErrorsToStatus()


async def _serve(args: argparse.Namespace) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    repository = _repository_class()(args.repository)
    dataplane = _dataplane_class()(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    rest = RESTServer("kserve.model_server:app", dataplane, extension, args.http_port)
    rest.config.host = args.host  # KServe binds 0.0.0.0; mesh's launched servers listen where they are told
    limits = [
        ("grpc.max_send_message_length", args.max_message_bytes),
        ("grpc.max_receive_message_length", args.max_message_bytes),
    ]
    server = grpc.aio.server(interceptors=(_interceptor(),), options=limits)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, extension), server)
    grpc_host = args.grpc_host or args.host
    server.add_insecure_port(f"{grpc_host}:{args.grpc_port}")
    await server.start()
    log.info("KServe model server: REST on %s:%d, gRPC on %s:%d", args.host, args.http_port, grpc_host, args.grpc_port)
    try:
        await rest.start()  # returns when uvicorn stops (SIGTERM / SIGINT)
    finally:
        await server.stop(grace=5)


def main() -> None:
    args = _flags()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s kserve-host %(name)s: %(message)s")
    args.repository.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
