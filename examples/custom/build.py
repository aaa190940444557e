"""`python -m examples.custom.build DEST`: the custom example models, ready to register: DEST/iris holds
examples/custom/iris (model.py, species.py) and weights.npz, a logistic regression fitted here on scikit-learn's
iris data (so the example needs nothing downloaded)."""

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
    folder = dest / "iris"
    shutil.copytree(SOURCE / "iris", folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    x, y = load_iris(return_X_y=True)
    fitted = LogisticRegression(max_iter=500).fit(x, y)
    np.savez(folder / "weights.npz", coef=fitted.coef_, intercept=fitted.intercept_)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.custom.build", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    print(build_iris(parser.parse_args().dest))


if __name__ == "__main__":
    main()
