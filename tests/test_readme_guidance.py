"""The README's text-to-image example runs verbatim on the shipped sd-tiny pipeline, offline."""

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Text-to-image pipelines") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_example_is_at_most_15_lines():
    assert len([line for line in _example().splitlines() if line.strip()]) <= 15


@pytest.mark.slow
def test_readme_example_runs_verbatim(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ns: dict = {}
    exec(compile(_example(), str(README), "exec"), ns)
    ctrl, scene, out = ns["ctrl"], ns["scene"], ns["out"]
    assert ctrl.step_count == 8
    assert out.contributions.shape[0] == 2 and out.contributions.shape[2:] == (4, 8, 8)  # N = 2 renders, 8x8x4
    assert out.contributions.dtype == torch.float32
    assert float(scene.detach().abs().sum()) > 0  # the SDS gradient moved the scene
    assert float(ctrl.costs.steps) > 0 and float(ctrl.costs.in_sy) > 0 and float(ctrl.costs.out_sy) > 0  # timed
