"""Regenerate tests/data/model_references.pt: each registered architecture's logits for a fixed input with
deterministic weights (tests/test_models.py::seeded_weights). Run only when a change to a model's numerics is
intended, and say so in the commit:  .venv/bin/python tests/data/make_references.py"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from test_models import REFERENCE_CASES, seeded_weights  # noqa: E402

from geoseg.models import build_model  # noqa: E402


def main() -> None:
    references = {}
    for name, (kwargs, shape) in REFERENCE_CASES.items():
        model = build_model(name, **kwargs).eval()
        model.load_state_dict(seeded_weights(model.state_dict()))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            references[name] = {"kwargs": kwargs, "input": x, "logits": model(x)}
    torch.save(references, HERE / "model_references.pt")


if __name__ == "__main__":
    main()
