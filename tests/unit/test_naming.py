"""Names in a namespace (mesh/naming.py): a router told its namespace answers that namespace's bare InferenceService
names first; others, and a router with no namespace, take names exactly."""

from __future__ import annotations

import pytest
from harness.fakes import FakeRuntime

from mesh.engine.routes import plan_routes
from mesh.errors import ModelNotFound
from mesh.naming import LocalNames, namespaced_id


def test_a_bare_name_means_the_local_namespaces_id_first() -> None:
    names = LocalNames("team-a")
    table = {"fraud.team-a": "a's", "fraud.team-b": "b's", "fraud": "the bare one", "other": "other"}
    assert names.lookup(table, "fraud") == "a's"
    assert names.lookup(table, "fraud.team-b") == "b's"  # qualified ids stay exact
    assert names.lookup(table, "other") == "other"
    assert names.candidates("fraud") == ("fraud.team-a", "fraud")
    assert names.local_name("fraud.team-a") == "fraud" and names.local_name("fraud.team-b") is None
    assert names.local_name(".team-a") is None
    assert names.names(table) == {*table, "fraud"}
    exact = LocalNames()
    assert exact.lookup(table, "fraud") == "the bare one" and exact.candidates("fraud") == ("fraud",)
    assert namespaced_id("fraud", "team-a") == "fraud.team-a"


@pytest.mark.parametrize("namespace", ["team-a", ""])
async def test_the_registry_and_the_engines_routes_resolve_alike(make_cluster, namespace: str) -> None:  # type: ignore[no-untyped-def]
    router = await make_cluster(FakeRuntime("rt-a"), namespace=namespace).router()
    await router.register("a-model", "b-model")
    for vmodel_id, model_id in (("fraud.team-a", "a-model"), ("fraud.team-b", "b-model")):
        await router.registry.set_vmodel(vmodel_id, model_id)
    await router.use("a-model")
    await router.use("b-model")
    resolve = router.registry.resolve
    assert resolve("fraud.team-a") == "a-model" and resolve("fraud.team-b") == "b-model"
    routes = plan_routes(router.manager.view, router.manager.copies, names=LocalNames(namespace))
    if namespace:
        assert resolve("fraud") == "a-model"
        assert routes.vmodels == {"fraud.team-a": "a-model", "fraud.team-b": "b-model", "fraud": "a-model"}
    else:
        with pytest.raises(ModelNotFound):
            resolve("fraud")
        assert routes.vmodels == {"fraud.team-a": "a-model", "fraud.team-b": "b-model"}
