"""The controller as several replicas: leader election on a coordination.k8s.io Lease (mesh/controller/leader.py),
against the fake API server (real HTTP, optimistic concurrency on resourceVersion) and the real kubernetes client."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.serve import ServeProcess
from k8s_harness import KubeCluster, running, settings_for, wait_for
from kubernetes import client
from test_controller import SKLEARN, loaded, sklearn

from mesh.controller.leader import LeaderElection, LeaseTiming

NAMESPACE = "mesh-system"
TIMING = LeaseTiming(lease_seconds=15.0, renew_deadline_seconds=10.0, renew_seconds=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def candidate(api: client.ApiClient, identity: str, clock: Clock) -> LeaderElection:
    return LeaderElection(api, NAMESPACE, "lease-under-test", identity, TIMING, clock=clock)


def holder(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("lease-under-test", NAMESPACE)
    return lease.spec.holder_identity or ""


def test_a_held_lease_is_taken_only_after_it_went_unrenewed_for_its_duration(api: client.ApiClient) -> None:
    clock = Clock()
    a, b = candidate(api, "a", clock), candidate(api, "b", clock)
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    clock.now += TIMING.lease_seconds - 1
    assert a.try_acquire_or_renew()  # renewed: b's wait starts over from when it saw the renewal
    assert not b.try_acquire_or_renew()
    clock.now += TIMING.lease_seconds - 1
    assert not b.try_acquire_or_renew()  # only 14 s since the renewal b saw
    assert a.is_leader() is False  # a itself has not renewed for longer than its deadline: it stopped leading
    clock.now += 2
    assert b.try_acquire_or_renew() and b.is_leader() and holder(api) == "b"
    assert not a.try_acquire_or_renew()  # a sees b's fresh record: it waits
    lease = client.CoordinationV1Api(api).read_namespaced_lease("lease-under-test", NAMESPACE)
    assert lease.spec.lease_transitions == 1


def test_two_candidates_taking_an_expired_lease_at_once_cannot_both_win(api: client.ApiClient) -> None:
    clock = Clock()
    first, a, b = candidate(api, "first", clock), candidate(api, "a", clock), candidate(api, "b", clock)
    assert first.try_acquire_or_renew()
    lease = client.CoordinationV1Api(api).read_namespaced_lease("lease-under-test", NAMESPACE)
    assert not a.try_acquire_or_renew() and not b.try_acquire_or_renew()  # both saw first's record
    clock.now += TIMING.lease_seconds + 1
    # Both read the same expired record; the one that writes second writes at a stale resourceVersion.
    stale = client.ApiClient().sanitize_for_serialization(lease)
    assert a.try_acquire_or_renew()
    with pytest.raises(client.ApiException) as conflict:
        client.CoordinationV1Api(api).replace_namespaced_lease("lease-under-test", NAMESPACE, stale)
    assert conflict.value.status == 409
    assert not b.try_acquire_or_renew() and holder(api) == "a"


def test_a_leader_that_stops_hands_the_lease_back(api: client.ApiClient) -> None:
    clock = Clock()
    a, b = candidate(api, "a", clock), candidate(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.stop()
    assert holder(api) == "" and not a.is_leader()
    assert b.try_acquire_or_renew()  # at once: no wait for the lease to expire


def test_two_controller_replicas_one_reconciles_and_the_other_takes_over(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-l", "iris-first", sklearn(models["logreg"]))
    settings = settings_for(mesh)
    with running(settings, api) as one:
        wait_for("the first replica to lead", one.leading)
        with running(settings, api) as two:
            wait_for("iris-first Loaded", lambda: loaded(cluster, "team-l", "iris-first"))
            passes = two.passes
            assert not two.leading()
            wait_for("the leader's next passes", lambda: one.passes >= 3)
            assert two.passes == passes == 0  # the standby never reconciled
            one.stop()  # the leader goes (a rollout): it hands the Lease back
            wait_for("the standby to lead", two.leading)
            cluster.isvc("team-l", "iris-second", sklearn(models["tree"]))
            wait_for("iris-second Loaded by the new leader", lambda: loaded(cluster, "team-l", "iris-second"))
            assert two.passes > 0
