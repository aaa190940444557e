"""Builds the example models that `mesh serve` registers, deterministically, from data bundled with scikit-learn.

`build_examples(dest)` writes every model under `dest` and returns what to register (model_id, model_type, path);
the same list, with paths relative to `dest`, is in examples/models.yaml. Sizes are deliberately varied, from
under 1 kB to about 1.3 MB, so that an instance capacity of a few MB forces evictions. Run
`python -m examples.build_models DEST` to build them by hand.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

SKLEARN_FILE = "model.joblib"  # the names the built-in runtime looks for inside a model directory
JSON_FILE = "model.json"


# A NamedTuple, not a dataclass: `mesh serve` imports this file by path without registering it in sys.modules,
# which dataclasses need while they build the class.
class ExampleModel(NamedTuple):
    """One model to register: its id, its modelType, and the directory holding its file (under `dest`)."""

    model_id: str
    model_type: str
    path: Path


# Each estimator with a fixed random_state, so rebuilding writes identical files.
_ESTIMATORS: dict[str, Callable[[], Any]] = {
    "iris-logreg": lambda: LogisticRegression(max_iter=1000),
    "iris-tree": lambda: DecisionTreeClassifier(random_state=0),
    "iris-knn": lambda: KNeighborsClassifier(n_neighbors=5),
    "iris-forest": lambda: RandomForestClassifier(n_estimators=50, max_depth=4, random_state=0),
    # The two big ones, each about 1.2-1.3 MB: an instance of ~2 MB can hold one, not both.
    "iris-extra-trees": lambda: ExtraTreesClassifier(n_estimators=300, random_state=0),
    "iris-mlp": lambda: make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(192, 192), max_iter=200, random_state=0)
    ),
}

_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "text-upper": ("text", {"transform": "upper"}),
    "text-reverse": ("text", {"transform": "reverse"}),
    "echo": ("echo", {}),
}


def _iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data, data.target


def build_examples(dest: Path) -> list[ExampleModel]:
    """Trains and writes every example model under `dest` (created if missing); returns them in a fixed order."""
    x, y = _iris()
    examples: list[ExampleModel] = []
    for model_id, make in _ESTIMATORS.items():
        estimator = make()
        with warnings.catch_warnings():
            # The MLP is here for its size; 200 epochs fit iris well without the optimizer's convergence test.
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(x, y)
        directory = dest / model_id
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(estimator, directory / SKLEARN_FILE)
        examples.append(ExampleModel(model_id, "sklearn", directory))
    for model_id, (model_type, config) in _CONFIGS.items():
        directory = dest / model_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_FILE).write_text(json.dumps(config, sort_keys=True) + "\n", encoding="utf-8")
        examples.append(ExampleModel(model_id, model_type, directory))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.build_models", description=__doc__)
    parser.add_argument("dest", type=Path, help="directory to write the models into")
    args = parser.parse_args()
    for example in build_examples(args.dest):
        size = sum(file.stat().st_size for file in example.path.iterdir())
        print(f"{example.model_id:18} {example.model_type:8} {size:>9} bytes  {example.path}")


if __name__ == "__main__":
    main()
