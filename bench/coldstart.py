"""Scenario 5, cold start: from the first request for an unloaded model to its answer, split into stages.

One worker process (`python -m bench.coldstart PLAN RESULTS`) runs a mesh router in-process, with one built-in
runtime as a separate process, registers the example models (examples/build_models.py: scikit-learn iris models
and `echo`), and for each model, R times: sends one ModelInfer for it, waits for the answer, sends a second
(warm) one, then unloads the copy so the next repetition is cold again.

The stages are timed in the worker from timestamps around the router's runtime SPI calls, taken by wrapping
`RuntimeClient.predict_size` and `RuntimeClient.load` in this process only — mesh's own code and hot path are
unchanged:

- **placement**: request sent → loadModel sent. Front door, name resolution, the size estimate
  (predictModelSize, only while no earlier load measured the model) and the policy's choice with its
  compare-and-swap claim.
- **load (SPI)**: loadModel round trip; **runtime load** is the part the runtime itself logs (its worker thread
  reading and unpickling the file). The built-in runtime has no pull: it reads model files from local disk. So
  **file read** (the file's bytes, page cache warm) and **unpickle** (joblib.load of the same file) are also
  timed on their own in this worker, as what a pull and a deserialization each cost here.
- **first inference**: loadModel answered → answer received: recording the copy LOADED, forwarding, and the
  model's first predict.

The client shares the router's process (one request at a time, so it competes with nothing but itself).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import joblib
import numpy as np

from bench.common import PY, REPO, Server, pyplot, runtime_argv
from bench.loadgen import MODEL_INFER
from mesh.gen import grpc_predict_v2_pb2 as pb

FULL = {"repetitions": 5, "models": None}
QUICK = {"repetitions": 2, "models": ["iris-logreg", "iris-mlp", "echo"]}
STAGES = ("placement", "load_spi", "first_inference")
RUNTIME_LOADED = re.compile(r"loaded model (\S+) \(type \w+, \d+ bytes\) in ([\d.]+) ms")


def _request(model_id: str, model_type: str) -> bytes:
    request = pb.ModelInferRequest(model_name=model_id)
    if model_type == "sklearn":
        row = np.asarray([[5.1, 3.5, 1.4, 0.2]], dtype=np.float64)
        request.inputs.add(name="input", datatype="FP64", shape=[1, 4])
    else:
        row = np.zeros([1, 16], dtype=np.float32)
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(row.tobytes())
    return request.SerializeToString()


def _model_file(path: Path) -> Path:
    return next(p for p in sorted(path.iterdir()) if p.suffix in (".joblib", ".json"))


async def _worker(plan: dict) -> dict:
    from examples.build_models import build_examples
    from mesh.config import Settings
    from mesh.placement.records import ModelRecord
    from mesh.router import Router
    from mesh.runtime import RuntimeClient

    stamps: dict[str, dict[str, float]] = {}

    def wrap(name: str):
        original = getattr(RuntimeClient, name)

        async def timed(self, model, timeout):
            mark = stamps.setdefault(model.model_id, {})
            mark[f"{name}_start"] = time.perf_counter()
            try:
                return await original(self, model, timeout)
            finally:
                mark[f"{name}_end"] = time.perf_counter()

        setattr(RuntimeClient, name, timed)

    wrap("predict_size")
    wrap("load")

    with tempfile.TemporaryDirectory(prefix="mesh-cold-") as tmp:
        workdir = Path(tmp)
        examples = [
            e for e in build_examples(workdir / "models") if plan["models"] is None or e.model_id in plan["models"]
        ]
        examples = [e for e in examples if e.model_type in ("sklearn", "echo")]
        runtime = Server("runtime", runtime_argv("cold-rt", 500_000_000), workdir)
        router = Router(
            Settings(host="127.0.0.1", grpc_port=0, rest_port=-1, metrics_port=-1, kv="memory://", data_dir=tmp)
        )
        channel = None
        try:
            ports = await router.start()
            await router.add_instance("cold-rt", f"127.0.0.1:{runtime.wait_port()}", ("sklearn", "echo", "text"))
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}")
            call = channel.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            results = []
            for example in examples:
                await router.registry.register(ModelRecord(example.model_id, example.model_type, str(example.path)))
                file = _model_file(example.path)
                started = time.perf_counter()
                data = file.read_bytes()
                read_ms = (time.perf_counter() - started) * 1000
                unpickle_ms = float("nan")
                if example.model_type == "sklearn":
                    started = time.perf_counter()
                    joblib.load(file)
                    unpickle_ms = (time.perf_counter() - started) * 1000
                body = _request(example.model_id, example.model_type)
                reps = []
                for _ in range(plan["repetitions"]):
                    stamps.pop(example.model_id, None)
                    t0 = time.perf_counter()
                    await call(body, timeout=120)
                    t1 = time.perf_counter()
                    await call(body, timeout=30)
                    warm_ms = (time.perf_counter() - t1) * 1000
                    mark = stamps[example.model_id]
                    logged = [m for m in RUNTIME_LOADED.findall(runtime.log_tail(20_000)) if m[0] == example.model_id]
                    reps.append(
                        {
                            "total_ms": (t1 - t0) * 1000,
                            "placement_ms": (mark["load_start"] - t0) * 1000,
                            "predict_size_ms": (mark["predict_size_end"] - mark["predict_size_start"]) * 1000
                            if "predict_size_start" in mark
                            else 0.0,
                            "load_spi_ms": (mark["load_end"] - mark["load_start"]) * 1000,
                            "runtime_load_ms": float(logged[-1][1]) if logged else float("nan"),
                            "first_inference_ms": (t1 - mark["load_end"]) * 1000,
                            "warm_request_ms": warm_ms,
                        }
                    )
                    await router.manager.unload_copy(example.model_id, "cold-rt")
                results.append(
                    {
                        "model": example.model_id,
                        "type": example.model_type,
                        "file_bytes": len(data),
                        "file_read_ms": read_ms,
                        "unpickle_ms": unpickle_ms,
                        "repetitions": reps,
                    }
                )
                print(f"  {example.model_id:<17} first {reps[0]['total_ms']:7.1f} ms", file=sys.stderr, flush=True)
            return {"models": results}
        finally:
            if channel is not None:
                await channel.close()
            await router.stop(1.0)
            runtime.stop()


def summarize(models: list[dict]) -> list[dict]:
    """Per model: the first cold start of the runtime process, and the median over the others."""
    rows = []
    for m in models:
        reps = m["repetitions"]
        later = reps[1:] or reps

        def median(key: str, later: list[dict] = later) -> float:
            return statistics.median(r[key] for r in later)

        rows.append(
            {
                "model": m["model"],
                "type": m["type"],
                "file_bytes": m["file_bytes"],
                "file_read_ms": m["file_read_ms"],
                "unpickle_ms": m["unpickle_ms"],
                "first_total_ms": reps[0]["total_ms"],
                "first": {k: reps[0][k] for k in reps[0]},
                **{f"{k}_ms": median(f"{k}_ms") for k in ("total", "placement", "predict_size", "load_spi")},
                "runtime_load_ms": median("runtime_load_ms"),
                "first_inference_ms": median("first_inference_ms"),
                "warm_request_ms": median("warm_request_ms"),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    out = [
        "| model | type | file KiB | first cold start ms | cold start ms (median) | placement ms | of which"
        " predictModelSize | loadModel SPI ms | of which runtime load | first inference ms | warm request ms"
        " | file read ms (alone) | unpickle ms (alone) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['type']} | {r['file_bytes'] / 1024:.1f} | {r['first_total_ms']:.1f}"
            f" | {r['total_ms']:.1f} | {r['placement_ms']:.2f} | {r['predict_size_ms']:.2f} | {r['load_spi_ms']:.1f}"
            f" | {r['runtime_load_ms']:.1f} | {r['first_inference_ms']:.2f} | {r['warm_request_ms']:.2f}"
            f" | {r['file_read_ms']:.2f} | {r['unpickle_ms']:.1f} |"
        )
    out += [
        "",
        "The first cold start of each model, stage by stage (the runtime process imports the model type's libraries\n"
        "on its first load; the router asks predictModelSize only while no earlier load measured the model):",
        "",
        "| model | total ms | placement ms | of which predictModelSize | loadModel SPI ms | of which runtime load"
        " | first inference ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = r["first"]
        out.append(
            f"| {r['model']} | {f['total_ms']:.1f} | {f['placement_ms']:.2f} | {f['predict_size_ms']:.2f}"
            f" | {f['load_spi_ms']:.1f} | {f['runtime_load_ms']:.1f} | {f['first_inference_ms']:.2f} |"
        )
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Stacked median stages per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [r["model"] for r in rows]
    bottom = np.zeros(len(rows))
    parts = [
        ("placement", [r["placement_ms"] for r in rows]),
        ("loadModel: runtime load", [r["runtime_load_ms"] for r in rows]),
        ("loadModel: SPI rest", [r["load_spi_ms"] - r["runtime_load_ms"] for r in rows]),
        ("first inference", [r["first_inference_ms"] for r in rows]),
    ]
    for label, values in parts:
        values = np.nan_to_num(np.asarray(values, dtype=float)).clip(min=0)
        ax.barh(names, values, left=bottom, label=label)
        bottom += values
    ax.set_xlabel("ms (median of repetitions after the first)")
    ax.set_title("cold start: first request for an unloaded model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="mesh-cold-plan-") as tmp:
        plan_path, results_path = Path(tmp) / "plan.json", Path(tmp) / "results.json"
        plan_path.write_text(json.dumps(params))
        subprocess.run(
            [PY, "-m", "bench.coldstart", str(plan_path), str(results_path)], cwd=REPO, timeout=300, check=True
        )
        models = json.loads(results_path.read_text())["models"]
    rows = summarize(models)
    plot(rows, out_dir / "coldstart.png")
    return {
        "parameters": params,
        "models": models,
        "summary": rows,
        "markdown": markdown(rows),
        "plots": ["coldstart.png"],
        "targets": [],  # issue 8 sets no cold-start target: it asks for the split
    }


def main() -> None:
    plan_path, results_path = Path(sys.argv[1]), Path(sys.argv[2])
    results = asyncio.run(_worker(json.loads(plan_path.read_text())))
    results_path.write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
