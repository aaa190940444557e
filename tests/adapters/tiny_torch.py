"""A tiny eager-mode PyTorch model for TorchServe, made with the torchserve venv: a Linear(4, 3) class in
model.py, its state_dict in model.pt and a custom handler; archived with the venv's torch-model-archiver."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

MODEL_PY = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)
"""

# Takes a JSON list of 4 numbers (Predictions' input "data"), or a KServe v2 request (TorchServe's v2 service
# hands the handler the request as a dict and wants a v2 response dict back). Bad input is the caller's fault:
# PredictionException(…, 400) makes TorchServe answer INVALID_ARGUMENT rather than its default UNAVAILABLE.
HANDLER_PY = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class TinyHandler(BaseHandler):
    def initialize(self, context):
        {initialize}
        super().initialize(context)

    def preprocess(self, data):
        self.v2 = []
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, dict) and "inputs" in body:
                self.v2.append(body)
                body = body["inputs"][0]["data"]
            elif isinstance(body, (bytes, bytearray, str)):
                try:
                    body = json.loads(body)
                except ValueError as exc:
                    raise PredictionException(f"input is not JSON: {{exc}}", 400) from exc
            if not isinstance(body, list) or len(body) != 4:
                raise PredictionException("input must be a list of 4 numbers", 400)
            if body == [6, 6, 6, 6]:
                raise RuntimeError("an unhandled error, on purpose")  # TorchServe answers it UNAVAILABLE
            rows.append(body)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, output):
        rows = output.tolist()
        if not self.v2:
            return rows
        return [
            {{"id": request.get("id", ""), "model_name": self.context.model_name, "model_version": "1.0",
             "outputs": [{{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": row}}]}}
            for request, row in zip(self.v2, rows)
        ]
"""

MAKE_WEIGHTS = """
import sys

import torch

sys.path.insert(0, sys.argv[1])
from model import TinyNet

model = TinyNet()
with torch.no_grad():
    model.linear.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4))
    model.linear.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
torch.save(model.state_dict(), sys.argv[1] + "/model.pt")
"""

X = [1.0, 2.0, 3.0, 4.0]
# y = W·x + b with W = arange(12).reshape(3, 4), b = (0.5, -1, 2)
Y = [20.5, 59.0, 102.0]


def _handler(initialize: str = "pass") -> str:
    return textwrap.dedent(HANDLER_PY).format(initialize=initialize)


def write_parts(folder: Path, venv: Path, initialize: str = "pass") -> Path:
    """model.py, handler.py and model.pt (made by the venv's torch) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (folder / "handler.py").write_text(_handler(initialize))
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-c", textwrap.dedent(MAKE_WEIGHTS), str(folder)], check=True, timeout=120)
    return folder


def archive(parts: Path, venv: Path, export: Path, name: str = "tiny") -> Path:
    """The parts as <export>/<name>.mar, archived by the venv's torch-model-archiver."""
    export.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(venv / "bin" / "torch-model-archiver"), "--model-name", name, "--version", "1.0",
         "--serialized-file", str(parts / "model.pt"), "--model-file", str(parts / "model.py"),
         "--handler", str(parts / "handler.py"), "--export-path", str(export)],
        check=True, timeout=60,
    )  # fmt: skip
    return export / f"{name}.mar"
