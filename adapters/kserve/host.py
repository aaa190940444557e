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


def _model_folder(repository: Path, name: str) -> Path:
    for pointer in repository.glob(f"*/{POINTER_FILE}"):
        entry = json.loads(pointer.read_text(encoding="utf-8"))
        if entry.get("name") == name:
            return Path(entry["path"])
    raise FileNotFoundError(f"no {POINTER_FILE} in {repository} names model {name!r}")


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

        def load_model(self, name: str) -> bool:  # KServe's startup scan; mesh loads each model on request
            return False

        async def load(self, name: str) -> bool:
            if name in self.models:
                return bool(await self.is_model_ready(name))
            self._serial += 1
            package = _Package(name, _model_folder(self._repository, name), self._serial)
            try:
                model = await asyncio.to_thread(self._make, package)
            except BaseException:
                package.forget()
                raise
            self._packages[name] = package
            self.update(model)
            return bool(model.ready)

        @staticmethod
        def _make(package: _Package) -> kserve.Model:
            model_class = _model_class(package.import_model_module(), kserve.Model)
            model = model_class(package.name)
            model.load()
            log.info("loaded custom model %s (%s from %s)", package.name, model_class.__name__, package.folder)
            return model

        def unload(self, name: str) -> None:
            super().unload(name)
            package = self._packages.pop(name, None)
            if package is not None:
                package.forget()

    return FolderRepository


def _interceptor() -> object:
    """KServe's mapping of its errors to gRPC codes, but: an error of the model's own becomes INTERNAL with its type
    and message (KServe's says only "Internal server error"), so the client learns what went wrong; and a client's
    invalid input is not logged as the server's error."""
    import grpc
    from grpc_interceptor.exceptions import GrpcException
    from kserve import errors
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

    known = (
        errors.InferenceError, errors.InvalidInput, errors.UnsupportedProtocol, errors.ServerNotReady,
        errors.ServerNotLive, errors.ModelNotFound, errors.ModelNotReady, NotImplementedError, GrpcException,
    )  # fmt: skip

    class ModelErrorsToStatus(ExceptionToStatusInterceptor):  # type: ignore[misc]
        async def handle_exception(self, ex: Exception, request: object, context: object, method: str) -> None:
            if isinstance(ex, errors.InvalidInput):  # the client's mistake: KServe logs it at ERROR, with a traceback
                log.info("%s refused: %s", method, ex.reason)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)  # type: ignore[attr-defined]
            if isinstance(ex, known):
                await super().handle_exception(ex, request, context, method)
                return
            log.error("%s failed in the model's code", method, exc_info=ex)
            await context.abort(grpc.StatusCode.INTERNAL, f"the model raised {type(ex).__name__}: {ex}")  # type: ignore[attr-defined]

    return ModelErrorsToStatus()


async def _serve(args: argparse.Namespace) -> None:
    import grpc
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    repository = _repository_class()(args.repository)
    dataplane = DataPlane(model_registry=repository)
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
