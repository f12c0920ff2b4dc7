"""The ``multiview`` YAML section: fall-backs to the pipeline's generator/manifest, paths, variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ganviews.core.errors import ConfigError
from ganviews.genrep.experiment import all_variants, datasets
from tasks.multiview import load_multiview_config, multiview_pipeline, plain

REPO = Path(__file__).resolve().parents[2]


def test_example_section_falls_back_to_the_pipeline_models_and_data() -> None:
    cfg = load_multiview_config(REPO / "configs" / "example.yaml")
    assert cfg.generator.name.endswith(".pkl") and cfg.generator.is_absolute()
    assert cfg.manifest.name == "manifest.parquet" and cfg.out == (REPO / "runs" / "multiview")
    assert list(datasets(cfg)) == ["gauss0.2", "gauss0.1", "gauss0.4", "gauss0.8"]
    names = [v.name(cfg.sampling.sigma) for v in all_variants(cfg)]
    assert names[:5] == [
        "untrained",
        "real-none-simclr-simclr",
        "generated-none-simclr-simclr",
        "generated-gauss0.2-none-simclr",
        "generated-gauss0.2-simclr-simclr",
    ]
    assert names[-1] == "generated-gauss0.2-simclr-simclr-n65000" and len(names) == 10
    pipe = multiview_pipeline(REPO / "configs" / "example.yaml")  # a pipeline YAML: its own
    assert pipe.multiview == cfg and pipe.orchestration.job == "celebahq-smiling"
    assert multiview_pipeline(plain(pipe)) == pipe  # flow parameters carry it whole


def test_section_errors_name_the_key(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": {"generator": "g.pkl"}}))
    with pytest.raises(ConfigError, match=r"multiview: section missing"):
        load_multiview_config(path)
    path.write_text(yaml.safe_dump({"multiview": {"generator": "g.pkl"}}))
    with pytest.raises(ConfigError, match=r"multiview\.manifest: required"):
        load_multiview_config(path)
    path.write_text(yaml.safe_dump({"multiview": {"generator": "g.pkl", "manifest": "m.parquet",
                                                  "sampling": {"sigma": -1}}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"sigma: expected ≥ 0, got -1"):
        load_multiview_config(path)
    path.write_text(yaml.safe_dump({"multiview": {"generator": "g.pkl", "manifest": "m.parquet",
        "variants": [{"data": "real", "t_z": "gauss"}]}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"t_z='gauss' needs data 'generated', got 'real'"):
        load_multiview_config(path)
    cfg = load_multiview_config({"multiview": {"generator": "g.pkl", "manifest": "m.parquet"}},
                                base_dir=tmp_path)  # fmt: skip
    assert cfg.generator == tmp_path / "g.pkl"
