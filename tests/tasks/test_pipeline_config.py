"""PipelineConfig: one YAML for every stage; each mistake one line naming the key; paths resolved."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from ganviews.core.config import load_yaml
from ganviews.core.errors import ConfigError
from ganviews.views.render import PRESETS
from tasks.pipeline_config import PipelineConfig, load_pipeline_config, pipeline_config_dict

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {
    "data": {"manifest": "data/manifest.parquet"},
    "paths": {"store": "out/store", "logits": "out/logits", "report": "out/report"},
    "models": {
        "generator": "models/g.pkl",
        "classifiers": {"smile": {"path": "models/c.pt", "task": "Smiling"}},
    },
}


def _with(**sections) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def test_minimal_yaml_resolves_paths_against_its_folder(tmp_path) -> None:
    path = tmp_path / "sub" / "job.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_pipeline_config(path)
    assert cfg.data.manifest == tmp_path / "sub" / "data" / "manifest.parquet"
    assert cfg.paths.store == tmp_path / "sub" / "out" / "store"
    assert cfg.models.classifiers["smile"].path == tmp_path / "sub" / "models" / "c.pt"
    assert cfg.state_dir == tmp_path / "sub" / "out" / "store.state"
    assert cfg.image_root == tmp_path / "sub" / "data"
    assert cfg.orchestration.mode == "embedded" and cfg.orchestration.devices == "auto"
    # Absolute paths stay as they are; a mapping resolves against base_dir.
    cfg2 = load_pipeline_config(_with(paths={"store": "/abs/store"}), base_dir=tmp_path)
    assert (
        cfg2.paths.store == Path("/abs/store") and cfg2.paths.logits == tmp_path / "out" / "logits"
    )


def test_plain_dict_round_trip() -> None:
    cfg = load_pipeline_config(
        _with(views={"preset": "cars", "n_views": 4}, orchestration={"devices": ["cpu", "cpu"]}),
        base_dir="/base",
    )
    again = load_pipeline_config(pipeline_config_dict(cfg))
    assert again == cfg
    assert (
        cfg.views.gan == PRESETS["cars"].gan
        and (cfg.views.n_views, cfg.views.num_perturbed) == (4, 3)  # not the preset's 32
        and cfg.views.jitter == PRESETS["cars"].jitter
    )
    assert cfg.orchestration.devices == ("cpu", "cpu")


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"bogus": 1},
            r"^bogus: unknown key \(allowed: align, classifier_training, corruptions, data",
        ),
        ({"invert": {"stepz": 3}}, r"^invert\.stepz: unknown key \(allowed: .*steps"),
        ({"invert": {"steps": -1}}, r"^invert\.steps: got -1, expected an integer ≥ 0$"),
        ({"invert": {"steps": "many"}}, r"^invert\.steps: expected an integer, got 'many'$"),
        ({"views": {"n_views": 1}}, r"^views\.n_views: got 1, must be ≥ 2"),
        (
            {"views": {"gan": [{"method": "warp", "layers": "fine"}]}},
            r"^views\.gan\.method: got 'warp'",
        ),
        (
            {"views": {"preset": "dogs"}},
            r"^views\.preset: 'dogs' is not one of \['cars', 'cats', 'faces'\]$",
        ),
        (
            {"align": {"mode": "eyes"}},
            r"^align\.mode: 'eyes' is not one of \['none', 'face', 'object'\]$",
        ),
        (
            {"report": {"ensemble": {"num_alphas": 1}}},
            r"^report\.ensemble\.num_alphas: 1 is too small",
        ),
        (
            {"classifier_training": {"train": {"epochs": 0}}},
            r"^classifier_training\.train\.epochs: 0; expected ≥ 1$",
        ),
        (
            {"classifier_training": {"views": {"p_generated": 2}}},
            r"^classifier_training\.views\.p_generated: 2",
        ),
        (
            {"orchestration": {"mode": "cluster"}},
            r"^orchestration\.mode: 'cluster' is not one of \['embedded', 'distributed'\]$",
        ),
        (
            {"orchestration": {"devices": ["gpu0"]}},
            r"^orchestration\.devices\[0\]: 'gpu0' is not auto, cpu, cuda or cuda:N$",
        ),
        (
            {"orchestration": {"devices": ["auto", "cpu"]}},
            r"^orchestration\.devices: \"auto\" stands alone",
        ),
        (
            {"orchestration": {"shard_size": 0}},
            r"^orchestration\.shard_size: 0 must be between 1 and 65536 \(images per shard",
        ),
        (  # issue 18.2: reached a 14.2 PiB allocation before
            {"orchestration": {"shard_size": 10**15}},
            r"^orchestration\.shard_size: 1000000000000000 must be between 1 and 65536",
        ),
        (
            {"orchestration": {"max_image_attempts": 0}},
            r"^orchestration\.max_image_attempts: 0 must be ≥ 1 or null$",
        ),
        (
            {"orchestration": {"max_image_attempts": 3, "retry_failed_images": False}},
            r"^orchestration\.max_image_attempts: 3 contradicts retry_failed_images: false",
        ),
        (
            {"orchestration": {"retry_delay_seconds": [-1]}},
            r"^orchestration\.retry_delay_seconds: \[-1\.0\] must be ≥ 0",
        ),
        ({"seed": "zero"}, r"^seed: expected an integer, got 'zero'$"),
        (
            {"models": {"classifiers": {"smile": {"task": "Smiling"}}}},
            r"^models\.classifiers\.smile\.path: required key is missing$",
        ),
        (
            {"encoder_training": {"enabled": True}},
            r"^encoder_training\.enabled: true needs models\.encoder",
        ),
        (
            {"classifier_training": {"enabled": True, "name": "frown", "data": "manifest"}},
            r"^classifier_training\.name: 'frown' is not a key",
        ),
        (
            {"classifier_training": {"enabled": True, "name": "smile"}},
            r"^classifier_training\.train_split: 'train' is not in data\.splits \['val', 'test'\]",
        ),
        (  # refused at load (issue 14), enabled or not: α is chosen on val, accuracy is on test
            {"classifier_training": {"train_split": "val"}},
            r"^classifier_training\.train_split: 'val' is an evaluation split \(α is chosen on "
            r"val, accuracy reported on test\); allowed: any split but 'val', 'test', e\.g\. 'train'$",
        ),
        (
            {"classifier_training": {"enabled": True, "name": "smile", "train_split": "test"}},
            r"^classifier_training\.train_split: 'test' is an evaluation split",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(sections, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline_config(_with(**sections))
    assert len(str(info.value).splitlines()) == 1, str(info.value)


def test_several_mistakes_are_reported_together() -> None:
    data = _with(invert={"steps": -1}, views={"n_views": 1}, orchestration={"mode": "cluster"})
    data.pop("paths")
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(data)
    lines = str(info.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "invert.steps",
        "orchestration.mode",
        "paths",
        "views.n_views",
    ]


def test_missing_file_and_non_mapping(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_pipeline_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping, got list"):
        load_pipeline_config(tmp_path / "list.yaml")


def _leaf_keys(tp, prefix="") -> set[str]:
    """Dotted keys of every field of a config dataclass tree (dicts and lists of configs: their entry fields)."""
    out = set()
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        key = f"{prefix}{f.name}"
        inner = hints[f.name]
        if dataclasses.is_dataclass(inner):
            out |= _leaf_keys(inner, key + ".")
        else:
            out.add(key)
    return out


def _yaml_keys(data, prefix="") -> set[str]:
    out = set()
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.add(key)
        if isinstance(v, dict):
            out |= _yaml_keys(v, key + ".")
    return out


def test_example_yaml_documents_every_key() -> None:
    """configs/example.yaml lists every key of PipelineConfig (so it documents all of them)."""
    data = load_yaml(REPO / "configs" / "example.yaml")
    missing = sorted(_leaf_keys(PipelineConfig) - _yaml_keys(data))
    assert not missing, f"configs/example.yaml lacks {missing}"
    text = (REPO / "configs" / "example.yaml").read_text()
    undocumented = [
        line
        for line in text.splitlines()
        if ":" in line
        and not line.lstrip().startswith(("#", "-"))
        and "#" not in line
        and not line.rstrip().endswith(":")
    ]
    assert not undocumented, f"keys without a comment: {undocumented}"


def test_every_yaml_in_configs_validates() -> None:
    """Pipeline configs load as PipelineConfig; the demo's own config through the demo loader."""
    from ganviews.cli.demo import load_demo_config

    files = sorted((REPO / "configs").glob("*.yaml"))
    assert any(p.name == "example.yaml" for p in files)
    for path in files:
        if path.name == "demo.yaml":
            load_demo_config(path)
            continue
        cfg = load_pipeline_config(path)
        assert cfg.paths.store.is_absolute() and cfg.models.generator.is_absolute(), path
