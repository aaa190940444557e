"""The KServe resources the controller reads, as plain data: InferenceService predictors and serving runtimes.

Objects arrive as the JSON dicts the API server sends; these functions take out what the controller uses and say,
in one sentence, what is wrong with a spec they cannot use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
RUNTIME_VERSION = "v1alpha1"
ISVC_PLURAL = "inferenceservices"
RUNTIME_PLURAL = "servingruntimes"
CLUSTER_RUNTIME_PLURAL = "clusterservingruntimes"
SERVING_RUNTIME = "ServingRuntime"
CLUSTER_SERVING_RUNTIME = "ClusterServingRuntime"

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
MODEL_MESH = "ModelMesh"
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
PINNED_ANNOTATION = "mesh.io/pinned"
"""On an InferenceService, "true": its model is never evicted to make room (registerModel's meshPinned)."""
MIN_COPIES_ANNOTATION = "mesh.io/min-copies"
"""On an InferenceService, a count: copies of its model kept loaded at all times (registerModel's meshMinCopies)."""
MAX_MIN_COPIES = 64
PREDICTOR_ANNOTATION = "mesh.io/predictor"
"""On a custom model's InferenceService (a KServe transformer), the InferenceService of its namespace whose model
its predict calls (the model key's `predictor`)."""

# KServe's older predictor form names the framework as a key (`predictor.sklearn.storageUri`); modelmesh-serving
# accepts these as the model format of that name.
LEGACY_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "onnx", "triton", "pmml", "paddle")


class SpecError(ValueError):
    """A predictor spec the controller cannot serve; the message says why, for the InferenceService's status."""


@dataclass(frozen=True)
class Predictor:
    """One InferenceService's predictor, as far as mesh serves it."""

    namespace: str
    name: str
    model_format: str
    """Lower case, as the runtime formats are compared and as the runtimes report their model types."""
    format_version: str | None
    runtime: str | None
    """The runtime the spec names, if any."""
    storage_uri: str | None
    storage_key: str | None
    storage_path: str | None
    storage_params: dict[str, str] = field(default_factory=dict)
    schema_path: str | None = None
    pinned: bool = False
    min_copies: int = 0
    transformer_of: str | None = None
    """The InferenceService (of this namespace) whose model this one's predict calls, from PREDICTOR_ANNOTATION."""


@dataclass(frozen=True)
class ModelFormat:
    name: str
    version: str | None
    auto_select: bool
    priority: int | None


@dataclass(frozen=True)
class Runtime:
    """A ServingRuntime (namespace set) or ClusterServingRuntime (namespace empty)."""

    kind: str
    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]
    annotations: dict[str, str]

    @property
    def formats(self) -> list[ModelFormat]:
        formats = []
        for entry in self.spec.get("supportedModelFormats") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                version = entry.get("version")
                priority = entry.get("priority")
                formats.append(
                    ModelFormat(
                        entry["name"].lower(),
                        str(version) if version is not None else None,
                        bool(entry.get("autoSelect", False)),
                        priority if isinstance(priority, int) else None,
                    )
                )
        return formats

    @property
    def multi_model(self) -> bool:
        return bool(self.spec.get("multiModel", False))

    @property
    def disabled(self) -> bool:
        return bool(self.spec.get("disabled", False))

    @property
    def server_type(self) -> str | None:
        adapter = self.spec.get("builtInAdapter") or {}
        server_type = adapter.get("serverType") if isinstance(adapter, dict) else None
        return server_type if isinstance(server_type, str) and server_type else None

    def instance_labels(self, namespace: str) -> tuple[str, ...]:
        """The labels its instances in `namespace` carry, which the models assigned to it there require, so that
        they load nowhere else (another namespace's runtime of the same format included): `rt:<namespace>/<name>`.
        Its adapter reports them; a runtime without a built-in adapter serves the SPI itself, and the router
        beside it that publishes it adds them (`mesh serve --runtime-labels`)."""
        return (f"rt:{namespace}/{self.name}",)

    @property
    def ref(self) -> str:
        """How messages name it: `ServingRuntime team-a/mlserver` or `ClusterServingRuntime mlserver`."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def metadata(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def is_model_mesh(isvc: dict[str, Any]) -> bool:
    """Whether the InferenceService asks for ModelMesh serving (the others are KServe's, not mesh's)."""
    return (metadata(isvc).get("annotations") or {}).get(DEPLOYMENT_MODE) == MODEL_MESH


def parse_runtime(obj: dict[str, Any], kind: str) -> Runtime:
    """A ServingRuntime or ClusterServingRuntime (`kind`: the list it came from)."""
    meta = metadata(obj)
    spec = obj.get("spec")
    return Runtime(
        kind=kind,
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "") if kind == SERVING_RUNTIME else "",
        uid=meta.get("uid", ""),
        spec=spec if isinstance(spec, dict) else {},
        annotations=dict(meta.get("annotations") or {}),
    )


def parse_predictor(isvc: dict[str, Any]) -> Predictor:
    """The predictor of an InferenceService; SpecError when it names no model format or no storage."""
    meta = metadata(isvc)
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    predictor = (isvc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, dict):
        raise SpecError("spec.predictor is missing")
    model, model_format, version = _model_spec(predictor)
    storage = model.get("storage")
    storage = storage if isinstance(storage, dict) else {}
    uri = model.get("storageUri")
    path = storage.get("path")
    if not uri and not path:
        raise SpecError("the predictor names no model: set storageUri, or storage.path (with storage.key)")
    if uri and path:
        raise SpecError("the predictor sets both storageUri and storage.path; set one")
    params = storage.get("parameters") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise SpecError("storage.parameters must map names to strings")
    annotations = meta.get("annotations") or {}
    runtime = model.get("runtime")
    return Predictor(
        namespace=namespace,
        name=name,
        model_format=model_format.lower(),
        format_version=version,
        runtime=runtime if isinstance(runtime, str) and runtime else None,
        storage_uri=uri if isinstance(uri, str) and uri else None,
        storage_key=storage.get("key") or annotations.get(SECRET_KEY_ANNOTATION) or None,
        storage_path=path if isinstance(path, str) and path else None,
        storage_params=dict(params),
        schema_path=storage.get("schemaPath") or annotations.get(SCHEMA_PATH_ANNOTATION) or None,
        pinned=_pinned(annotations.get(PINNED_ANNOTATION)),
        min_copies=_min_copies(annotations.get(MIN_COPIES_ANNOTATION)),
        transformer_of=_predictor_name(annotations.get(PREDICTOR_ANNOTATION), name),
    )


def _predictor_name(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "/" in value or value == name:
        raise SpecError(
            f"annotation {PREDICTOR_ANNOTATION} names another InferenceService of this namespace, not {value!r}"
        )
    return value


def _pinned(value: object) -> bool:
    if value is None or value in ("true", "false"):
        return value == "true"
    raise SpecError(f'annotation {PINNED_ANNOTATION} must be "true" or "false", not {value!r}')


def _min_copies(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit() and int(value) <= MAX_MIN_COPIES:
        return int(value)
    raise SpecError(
        f"annotation {MIN_COPIES_ANNOTATION} must be a whole number from 0 to {MAX_MIN_COPIES}, not {value!r}"
    )


def _model_spec(predictor: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """The model part of a predictor, its format name and version: `predictor.model`, or a framework key."""
    model = predictor.get("model")
    if isinstance(model, dict):
        model_format = model.get("modelFormat")
        if not isinstance(model_format, dict) or not isinstance(model_format.get("name"), str):
            raise SpecError("spec.predictor.model.modelFormat.name is missing")
        version = model_format.get("version")
        return model, model_format["name"], str(version) if version is not None else None
    for framework in LEGACY_FRAMEWORKS:
        legacy = predictor.get(framework)
        if isinstance(legacy, dict):
            return legacy, framework, None
    raise SpecError("spec.predictor has no model (spec.predictor.model with a modelFormat)")
