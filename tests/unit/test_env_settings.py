"""Settings from the environment (mesh/env_settings.py), as the router and the controller read them."""

from __future__ import annotations

import pytest

from mesh.config import Settings
from mesh.controller.settings import ControllerSettings


def test_variables_override_defaults_and_explicit_values_override_variables() -> None:
    env = {"MESH_GRPC_PORT": "9000", "MESH_METRICS_PER_MODEL": "off", "MESH_KV": "memory://"}
    settings = Settings.from_env(env, kv="etcd://127.0.0.1:2379", rest_port=None)
    assert (settings.grpc_port, settings.metrics_per_model, settings.kv) == (9000, False, "etcd://127.0.0.1:2379")
    assert settings.rest_port == Settings.rest_port  # None means "not given"


@pytest.mark.parametrize("raw", ["yes", "TRUE", " 1 ", "on"])
def test_booleans_read_the_usual_spellings(raw: str) -> None:
    assert ControllerSettings.from_env({"MESH_CONTROLLER_SCALE_TO_ZERO": "no"}).scale_to_zero is False
    assert Settings.from_env({"MESH_METRICS_PER_MODEL": raw}).metrics_per_model is True


@pytest.mark.parametrize(
    ("cls", "variable", "raw"),
    [(Settings, "MESH_GRPC_PORT", "eighty"), (ControllerSettings, "MESH_CONTROLLER_SCALE_TO_ZERO", "maybe")],
)
def test_a_value_that_does_not_parse_names_the_variable(cls: type, variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"{variable}='{raw}' is not a valid"):
        cls.from_env({variable: raw})
