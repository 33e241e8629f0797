"""ControllerConfig: every error names the field as the caller spelled it (examples and a property test)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carv_adapt import AdaptiveController, ConfigError


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_timestep": 100}, "num_timestep"),
        ({"k_min": 0}, "k_min"),
        ({"k_min": 4, "k_max": 2}, "k_max"),
        ({"alpha": 1.5}, "alpha"),
        ({"stratification": "sobol"}, "stratification"),
        ({"allocation": "fixed_budget"}, "budget"),
        ({"budget": -1.0, "allocation": "fixed_budget"}, "budget"),
        ({"warmup_k": (2, 0)}, "warmup_k"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AdaptiveController(**kwargs)


CONFIG_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "num_timesteps": st.integers(-5, 2000),
        "t_min": st.integers(-5, 1000),
        "num_bins": st.integers(-2, 1200),
        "k_min": st.integers(-2, 10),
        "k_max": st.integers(-2, 100),
        "alpha": st.one_of(st.floats(-1, 2), st.just(float("nan"))),
        "batch_size": st.integers(-1, 8),
        "stratification": st.sampled_from(["iid", "global", "bogus", ""]),
        "forgetting": st.floats(-0.5, 1.5),
        "warmup_k": st.lists(st.integers(-1, 5), max_size=3).map(tuple),
        "budget": st.one_of(st.none(), st.floats(-1, 10)),
        "allocation": st.sampled_from(["fixed_batch", "fixed_budget"]),
    },
)


@settings(max_examples=150, deadline=None)
@given(CONFIG_FIELDS)
def test_every_config_is_accepted_or_rejected_with_a_named_field(cfg):
    try:
        AdaptiveController(**cfg)
    except ConfigError as e:
        items = str(e).removeprefix("invalid ControllerConfig: ").split("; ")
        for item in items:
            field, _, message = item.partition("=")
            if field in cfg:
                continue  # a field-level error, named as the caller spelled it
            # A cross-field rule (loc is the block): its message must name a setting the caller passed.
            assert any(name in message for name in cfg if name not in ("allocation",)) or "budget" in message, item
