"""The whole benchmark command (``run_bench``) at quick sizes."""

import json

import pytest
import torch


@pytest.mark.slow
def test_quick_bench_writes_tables_json_and_figures(tmp_path):
    from carv_adapt.bench import BenchSettings, run_bench
    from carv_adapt.bench.ablation import VARIANTS

    torch.set_num_threads(1)
    s = BenchSettings(workloads=("attribution",), e2e_seeds=(), sweep=False, scaling=False, quick=True, out=tmp_path)
    result = run_bench(s)
    data = json.loads((tmp_path / "bench.json").read_text())
    (w,) = data["ablation"]
    assert len(w["checkpoints"]) == 3
    for c in w["checkpoints"]:
        # "+outer" only where the workload places its outer draws by the plan (sds3d)
        assert [r["variant"] for r in c["variants"]] == [v for v in VARIANTS if v != "+outer"]
        for r in c["variants"]:
            assert r["W"] > 0 and r["ecm_ci90"][0] <= r["ecm"] <= r["ecm_ci90"][1]
        by = {r["variant"]: r for r in c["variants"]}
        over = c["adaptive_over_oracle"]  # W_oracle / W_adaptive, the ratio of the two ECMs
        assert over["ratio"] == pytest.approx(by["adaptive"]["ecm"] / by["oracle"]["ecm"], rel=1e-9)
        assert over["ci90"][0] <= over["ratio"] <= over["ci90"][1]
    assert 0 < w["overhead"]["controller_fraction"] < 1
    md = (tmp_path / "bench.md").read_text()
    assert "| attribution |" in md and "adaptive / oracle" in md
    assert (tmp_path / "ecm.png").stat().st_size > 0 and (tmp_path / "calibration.png").stat().st_size > 0
    assert result["wall_seconds"] > 0
