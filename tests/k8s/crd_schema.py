"""The CRDs in deploy/crds as validators: each version's openAPIV3Schema, checked with jsonschema.

Validation is strict, like `kubectl apply --validate=strict`: a field the schema does not name is an error,
except under `x-kubernetes-preserve-unknown-fields` (the API server would prune it silently; a test should
rather hear about the typo).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"


@dataclass(frozen=True)
class CustomKind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool
    schema: dict[str, Any]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with additionalProperties: false wherever it lists properties and keeps no unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if "properties" in node and "additionalProperties" not in node:
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        for child in (node.get("properties") or {}).values():
            walk(child)
        walk(node.get("items"))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(schema)
    return schema


def custom_kinds(crd_dir: Path = CRD_DIR) -> list[CustomKind]:
    kinds = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            kinds.append(
                CustomKind(
                    spec["group"],
                    version["name"],
                    spec["names"]["plural"],
                    spec["names"]["kind"],
                    spec["scope"] == "Namespaced",
                    "status" in (version.get("subresources") or {}),
                    version["schema"]["openAPIV3Schema"],
                )
            )
    return kinds


def validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A function that raises ValueError (naming the field) for an object the schema does not accept."""
    checker = jsonschema.Draft7Validator(strict(schema))

    def validate(obj: dict[str, Any]) -> None:
        error = jsonschema.exceptions.best_match(checker.iter_errors(obj))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise ValueError(f"{where}: {error.message}")

    return validate


def validators(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], Callable[[dict[str, Any]], None]]:
    """(apiVersion, kind) → validator, for every custom kind the CRDs define."""
    return {(f"{k.group}/{k.version}", k.kind): validator(k.schema) for k in custom_kinds(crd_dir)}
