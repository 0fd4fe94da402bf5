"""Sweep composition reuses one composed base per set of group overrides; it must give exactly
what composing every point from scratch gives."""

import pytest

from dr_exp.compose import compose_many, parse_sweep, sweep_keys
from dr_exp.errors import ConfigError
from tests.conftest import EXP_CONFIGS

SWEEPS = [
    "model=small_cnn,resnet18_cifar optimizer=sgd,adamw optimizer.lr=0.1,0.01",
    "data.batch_size=16,32 +x=range(0,3) lr_scheduler=cosine,step,none optimizer.weight_decay=0",
    "machine=cpu,slurm data.num_workers=0,3 ~metrics",
    "+trainer.limit_val_batches=1,2 transforms=none,cifar10_augmented seed=0,7",
    # Interpolation-read keys, additions, lists, null, booleans, quoted strings, deletions:
    "paths.data_dir=/a,/b optimizer.lr=0.1,1e-3 +new.deep.key=1,2",
    "++trainer.max_epochs=5 +x=[1,2],[3] data.synthetic.noise=null,0.5 trainer.enable_progress_bar=true,false",
    "+name='a,b',c ~metrics seed=range(0,2)",
    "+name='a,b','c d' +items=['x y',z],[w] seed=0,1",
]


@pytest.mark.parametrize("params", SWEEPS)
def test_reused_composition_equals_composition_from_scratch(params):
    points = parse_sweep(params)
    fast = compose_many(EXP_CONFIGS, "quickstart", points, sweep_keys(params))
    slow = compose_many(EXP_CONFIGS, "quickstart", points, sweep_keys(params), reuse=False)
    assert len(fast) == len(slow) == len(points)
    for f, s in zip(fast, slow, strict=True):
        assert f.config == s.config, f.overrides
        assert f.sweep_params == s.sweep_params


def test_interpolations_follow_value_overrides():
    (c,) = compose_many(EXP_CONFIGS, "quickstart", [["paths.data_dir=/x"]])
    assert c.config["data"]["data_dir"] == "/x"  # data.data_dir: ${paths.data_dir}


@pytest.mark.parametrize("bad", [["optimizer.nope=1"], ["model=nope"], ["~nothing.here"], ["data.batch_size=[1,"]])
def test_bad_points_fail_with_config_error(bad):
    with pytest.raises(ConfigError):
        compose_many(EXP_CONFIGS, "quickstart", [[], bad])


@pytest.mark.parametrize("params", SWEEPS[4:])
def test_a_sweep_submits_exactly_what_hydra_composes(exp, params):
    """The sweep path types each point's overrides once (expand_sweep) and applies plain values
    without OmegaConf; the queued configs equal Hydra's, point for point."""
    res = exp.sweep(str(EXP_CONFIGS / "quickstart.yaml"), params, force=True)
    points = parse_sweep(params)
    slow = compose_many(EXP_CONFIGS, "quickstart", points, sweep_keys(params), reuse=False)
    assert len(res.submitted) == len(slow)
    by_overrides = {tuple(r.overrides): r.config for r in res.submitted}
    for s in slow:
        expected = {k: v for k, v in s.config.items() if k not in ("timeout", "max_attempts", "resources")}
        assert by_overrides[tuple(s.overrides)] == expected, s.overrides


def test_a_batch_encodes_shared_sections_once_and_hashes_as_each_config_alone():
    """Configs of one batch that share sections (the same objects) get exactly the canonical
    JSON, and so the config hash, that each one gets alone."""
    import json

    from dr_exp.compose import plain_config
    from dr_exp.job import canonical_json

    model = {"name": "resnet", "widths": [64, 128], "act": {"kind": "relu", "slope": 0.01}}
    data = {"batch_size": 128, "mean": (0.49, 0.48), "name": "cifär", "aug": [{"z": 1, "a": None}]}
    configs = [{"_target_": "pkg.train", "seed": i, "model": model, "data": data, "lr": 10.0 ** -i,
                "timeout": 60, "ünïcode": "✓", "Z": [model, 1.5e300], "a": {"b": float("inf")},
                "flag": True, "off": False, "nothing": None, "n": -3, "t": ("x", 2)} for i in range(5)]
    shared: dict = {}
    for config in configs:
        _, canonical = plain_config(config, "config", shared)
        alone = canonical_json(config)
        assert canonical == alone
        assert json.loads(canonical) == json.loads(json.dumps({k: v for k, v in config.items() if k != "timeout"}))
    assert ("json", id(model)) in shared and ("json", id(data)) in shared  # each encoded once
