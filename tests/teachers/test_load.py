"""Bring your own teacher: load_teacher by name or folder, and SDS-3D / the demo adapters on it."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from carv_adapt.adapters import build_adapter  # noqa: E402
from carv_adapt.errors import ConfigError  # noqa: E402
from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher  # noqa: E402
from carv_adapt.teachers.load import load_teacher  # noqa: E402
from carv_adapt.teachers.sd_tiny import make_pipeline  # noqa: E402
from carv_adapt.teachers.text import TextConditionedTeacher  # noqa: E402
from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload  # noqa: E402
from tests.sd_helpers import tiny_sd_parts, tiny_unet_folder  # noqa: E402

SMALL = dict(grid_size=6, samples_per_ray=4, resolution=8, batch_size=2, max_inner_batch=5)


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return tiny_unet_folder(tmp_path_factory.mktemp("unet_teacher"), image_channels=3, image_size=16)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_teacher")
    make_pipeline(**tiny_sd_parts(root / "tok", image_channels=1, image_size=16)).save_pretrained(root / "pipe")
    return root / "pipe"


def test_tiny_digits_by_name_applies_the_config():
    t = load_teacher("tiny-digits", guidance_scale=2.0, max_batch=7)
    assert isinstance(t, DiffusersTeacher) and t.guidance_scale == 2.0 and t.max_batch == 7 and t.null_class == 10


@pytest.mark.slow
def test_unet_folder_sets_the_scene_channels_and_render_size(unet_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wl = SDS3DWorkload(SDS3DConfig(teacher=str(unet_folder), guidance_scale=1.5, **SMALL))
    assert isinstance(wl.teacher, DiffusersTeacher)
    assert wl.teacher.guidance_scale == 1.5 and wl.teacher.max_batch == 5
    assert (wl.channels, wl.image_size) == (3, 16)
    scene = wl.new_scene()
    assert scene.channels == 3
    img, lat = wl.upstream(scene, 2, torch.Generator().manual_seed(0))
    assert img.shape == (2, 3, 16, 16) and lat.shape == (2, 4, 8, 8)
    res = wl.run(2)
    assert len(res.records) == 2
    assert 0.0 <= wl.score(wl.scene_from_state(res.final_state), views=2) <= 1.0


def test_pipeline_folder_is_prompted_with_the_digit(pipeline_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = build_adapter("sds3d", 0, True, teacher=str(pipeline_folder), **SMALL)
    t = a.wl.teacher
    assert isinstance(t, TextConditionedTeacher) and t.guidance_scale == 3.0
    assert (a.wl.channels, a.wl.image_size) == (1, 16)
    # A label is the prompt "a photo of the digit three": the same prediction as its embedding.
    x, tt = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    by_label = t.predict_eps(x, tt, torch.tensor([3, 3]))
    by_text = t.predict_eps(x, tt, ["a photo of the digit three"] * 2)
    torch.testing.assert_close(by_label, by_text)
    assert not torch.allclose(by_label, t.predict_eps(x, tt, torch.tensor([5, 5])))
    res = a.run(2)
    assert len(res.records) == 2
    assert a.views(res).shape == (5, 1, 16, 16)


def test_bad_teachers_are_one_line_errors(tmp_path, unet_folder):
    with pytest.raises(ConfigError, match="'nope'"):
        load_teacher("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither model_index.json nor unet/config.json"):
        load_teacher(tmp_path / "empty")
    with pytest.raises(ConfigError, match="guidance_scale=1.0 but SDS3DConfig.guidance_scale=3.0"):
        SDS3DWorkload(SDS3DConfig(**SMALL), teacher=load_teacher("tiny-digits", guidance_scale=1.0))
    with pytest.raises(ConfigError, match="not both"):
        SDS3DWorkload(SDS3DConfig(teacher=str(unet_folder), **SMALL), teacher=load_teacher("tiny-digits"))
    with pytest.raises(ConfigError, match="sds3d workload only, not 'distill'"):
        build_adapter("distill", 0, True, teacher="sd-tiny")


def test_cli_passes_teacher_to_demo_and_bench(monkeypatch):
    import carv_adapt.bench
    import carv_adapt.demo
    from carv_adapt.cli import main

    seen = {}

    def stop(settings, *a, **k):
        seen[type(settings).__name__] = settings.teacher
        raise ConfigError("stop")

    monkeypatch.setattr(carv_adapt.demo, "run_demo", stop)
    monkeypatch.setattr(carv_adapt.bench, "run_bench", stop)
    assert main(["demo", "--teacher", "sd-tiny", "--quick"]) == 2
    assert main(["bench", "--teacher", "/some/folder", "--quick"]) == 2
    assert seen == {"DemoSettings": "sd-tiny", "BenchSettings": "/some/folder"}


@pytest.mark.slow
def test_demo_runs_on_a_teacher_folder(unet_folder, tmp_path, monkeypatch):
    import json

    from carv_adapt.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "report"
    # 8 baseline steps: room for the adaptive run's first step, which also pays its first probe, whatever the load
    argv = ["demo", "--teacher", str(unet_folder), "--steps", "8", "--replications", "3", "--quick", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["steps"] >= 8 and summary["adaptive"]["steps"] >= 1
    assert summary["quality_metric"] == "log p(digit)" and summary["baseline"]["quality"] < 0
    assert (out / "views.png").stat().st_size > 1000


def test_the_control_variate_estimator_reuses_a_named_teacher(monkeypatch):
    """The ablation's "+CV" estimator copies the workload with the control on: with a teacher named in the config
    (``--teacher sd-tiny``) the copy takes the loaded teacher object instead of loading it again or refusing."""
    import carv_adapt.workloads.sds3d as sds3d

    monkeypatch.setattr(sds3d, "digits_surrogate", lambda *a, **k: object())  # the fit itself is tested elsewhere
    a = build_adapter("sds3d", 0, True, teacher="sd-tiny")
    assert a.wl.config.teacher == "sd-tiny"
    estimate = a.cv_estimator({k: v.detach() for k, v in a.wl.new_scene().state_dict().items()})
    assert callable(estimate)
