"""Which serving runtime serves a predictor: a pure function of the predictor and the runtimes that exist.

The rules are KServe's: a runtime the predictor names wins (a namespace ServingRuntime over a
ClusterServingRuntime of the same name), else the first runtime that lists the model format with
`autoSelect: true` — namespace ServingRuntimes before ClusterServingRuntimes, a higher `priority` first, then by
name so the choice never depends on listing order. Disabled runtimes and single-model runtimes
(`multiModel: false`) never serve mesh models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh.controller.resources import ModelFormat, Predictor, Runtime

# The reasons KServe's modelStatus.lastFailureInfo uses for a predictor no runtime takes.
RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
RUNTIME_DISABLED = "RuntimeDisabled"
NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"


@dataclass(frozen=True)
class NoRuntime:
    """Why no runtime serves the predictor: a KServe failure reason and a sentence."""

    reason: str
    message: str


def _format_text(predictor: Predictor) -> str:
    version = f" (version {predictor.format_version})" if predictor.format_version else ""
    return f"model format '{predictor.model_format}'{version}"


def _matching_format(runtime: Runtime, predictor: Predictor, auto_select: bool) -> ModelFormat | None:
    """The runtime's entry for the predictor's format: same name (any case) and, when the predictor gives a
    version, the same version; with auto_select, only an entry that allows automatic selection."""
    for entry in runtime.formats:
        if entry.name != predictor.model_format:
            continue
        if predictor.format_version is not None and entry.version != predictor.format_version:
            continue
        if auto_select and not entry.auto_select:
            continue
        return entry
    return None


def _usable(runtime: Runtime) -> bool:
    return runtime.multi_model and not runtime.disabled


def select_runtime(
    predictor: Predictor, namespace_runtimes: Iterable[Runtime], cluster_runtimes: Iterable[Runtime]
) -> Runtime | NoRuntime:
    """The runtime for `predictor` (namespace_runtimes: the ServingRuntimes of its namespace), or why none."""
    local = {r.name: r for r in namespace_runtimes}
    # A namespace ServingRuntime shadows the ClusterServingRuntime of the same name.
    cluster = {r.name: r for r in cluster_runtimes if r.name not in local}
    if predictor.runtime is not None:
        return _named(predictor, local.get(predictor.runtime) or cluster.get(predictor.runtime))

    def ranked(runtimes: Iterable[Runtime]) -> list[Runtime]:
        scored = []
        for runtime in runtimes:
            entry = _matching_format(runtime, predictor, auto_select=True)
            if entry is not None and _usable(runtime):
                scored.append((-(entry.priority or 0), runtime.name, runtime))
        return [runtime for _, _, runtime in sorted(scored, key=lambda s: s[:2])]

    candidates = ranked(local.values()) + ranked(cluster.values())
    if candidates:
        return candidates[0]
    return NoRuntime(
        NO_SUPPORTING_RUNTIME,
        f"no multi-model ServingRuntime or ClusterServingRuntime supports {_format_text(predictor)} with "
        "autoSelect: true",
    )


def _named(predictor: Predictor, runtime: Runtime | None) -> Runtime | NoRuntime:
    name = predictor.runtime
    if runtime is None:
        return NoRuntime(
            RUNTIME_NOT_RECOGNIZED,
            f"runtime '{name}' is neither a ServingRuntime in namespace '{predictor.namespace}' nor a "
            "ClusterServingRuntime",
        )
    if runtime.disabled:
        return NoRuntime(RUNTIME_DISABLED, f"{runtime.ref} is disabled")
    if not runtime.multi_model:
        return NoRuntime(RUNTIME_DISABLED, f"{runtime.ref} is not a multi-model runtime (multiModel: true)")
    if _matching_format(runtime, predictor, auto_select=False) is None:
        return NoRuntime(NO_SUPPORTING_RUNTIME, f"{runtime.ref} does not support {_format_text(predictor)}")
    return runtime
