"""A real workload to inject faults under: clients sending ModelInfer through the routers in a loop, every answer
classified. The promise a fault test checks: every request is answered — served, or failed with a retryable
status (UNAVAILABLE) and a message saying why — and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from harness.cluster import CALL_TIMEOUT_S, Cluster, echo_request

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
MAX_SECONDS = 120.0
"""No workload runs longer than this unless its test says so (max_seconds), whatever its test does."""


@dataclass
class Outcomes:
    served: int = 0
    retryable: Counter[str] = field(default_factory=Counter)
    """Retryable failures by message: each is answered, and says why."""
    broken: list[str] = field(default_factory=list)
    """Anything else: a non-retryable code, an empty message, a wrong answer."""
    latencies_s: list[float] = field(default_factory=list)

    def p99_s(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


class Workload:
    """`clients` loops, each sending to the models in turn, through the routers in turn, until stop()."""

    def __init__(
        self,
        cluster: Cluster,
        model_ids: Sequence[str],
        clients: int = 4,
        routers: Sequence[int] | None = None,
        timeout: float = CALL_TIMEOUT_S,
        choose: Callable[[int], str] | None = None,
        max_seconds: float = MAX_SECONDS,
    ) -> None:
        """choose(turn) picks each request's model (a skewed trace, say); default: the models in turn.
        max_seconds: the clients stop by themselves after this long, stopped or not."""
        self._cluster = cluster
        self._models = list(model_ids)
        self._routers = list(routers) if routers is not None else list(range(len(cluster.routers)))
        self._clients = clients
        self._timeout = timeout
        self._choose = choose or (lambda turn: self._models[turn % len(self._models)])
        self._max_seconds = max_seconds
        self._stop = asyncio.Event()
        self._values = itertools.count(1)
        self.outcomes = Outcomes()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Workload:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self._clients)]
        return self

    async def stop(self) -> Outcomes:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _client(self, index: int) -> None:
        deadline = time.monotonic() + self._max_seconds
        turn = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            model_id = self._choose(turn)
            router = self._routers[turn % len(self._routers)]
            turn += 1
            await self._one(model_id, router)

    async def _one(self, model_id: str, router: int) -> None:
        value = next(self._values)
        started = time.monotonic()
        try:
            # The router object is looked up per call: a restarted router replaces it in the cluster.
            stub = self._cluster.routers[router].inference
            reply = await stub.ModelInfer(echo_request(model_id, value), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            message = exc.details() or ""
            if exc.code() in RETRYABLE and message:
                self.outcomes.retryable[f"{exc.code().name}: {message[:160]}"] += 1
                await asyncio.sleep(0.05)  # what a client's retry policy does before it tries again
            else:
                self.outcomes.broken.append(f"{model_id} via router {router}: {exc.code().name}: {message!r}")
            return
        if list(reply.raw_output_contents) != [value.to_bytes(4, "little")] or reply.model_name != model_id:
            self.outcomes.broken.append(f"{model_id} via router {router}: wrong answer {reply}")
            return
        self.outcomes.served += 1
        self.outcomes.latencies_s.append(time.monotonic() - started)


async def consistent(cluster: Cluster, model_ids: Sequence[str]) -> None:
    """The registry ends complete and consistent: every router lists every model, and each model's LOADED copies
    (as every router lists them) are exactly the live runtimes that report it loaded — none on a dead instance,
    none twice. Waits a little for views to settle (leases expire, watches deliver)."""
    deadline = time.monotonic() + 15.0
    while True:
        problems = []
        for router in cluster.routers:
            with contextlib.suppress(grpc.aio.AioRpcError):
                listed = await router.models()
                missing = set(model_ids) - set(listed)
                if missing:
                    problems.append(f"{router.name} lost {sorted(missing)}")
                for model_id in model_ids:
                    copies = await router.loaded_copies(model_id) if model_id in listed else set()
                    holders = await cluster.holders(model_id)
                    if copies != holders:
                        problems.append(
                            f"{router.name}: {model_id} listed on {sorted(copies)}, held by {sorted(holders)}"
                        )
                continue
            problems.append(f"{router.name} does not answer")
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError("; ".join(problems))
        await asyncio.sleep(0.25)
