"""`python -m examples.custom.build DEST`: the custom example models, ready to register: DEST/iris holds
examples/custom/iris (model.py, species.py) and weights.npz, a logistic regression fitted here on scikit-learn's
iris data (so the example needs nothing downloaded); DEST/iris_transformer and DEST/iris_predictor are the same
model as a KServe transformer and the predictor it calls (the weights beside the predictor)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

SOURCE = Path(__file__).resolve().parent


def build_iris(dest: Path) -> Path:
    """DEST/iris: the model's code and its weights; returns the folder."""
    return _with_weights(_copy("iris", dest))


def build_pair(dest: Path) -> tuple[Path, Path]:
    """DEST/iris_transformer and DEST/iris_predictor (with the weights); returns the two folders."""
    return _copy("iris_transformer", dest), _with_weights(_copy("iris_predictor", dest))


def _copy(example: str, dest: Path) -> Path:
    folder = dest / example
    shutil.copytree(SOURCE / example, folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return folder


def _with_weights(folder: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    fitted = LogisticRegression(max_iter=500).fit(x, y)
    np.savez(folder / "weights.npz", coef=fitted.coef_, intercept=fitted.intercept_)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.custom.build", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    dest = parser.parse_args().dest
    for folder in (build_iris(dest), *build_pair(dest)):
        print(folder)


if __name__ == "__main__":
    main()
