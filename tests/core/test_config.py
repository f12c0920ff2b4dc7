from dataclasses import dataclass, field
from typing import Literal

import pytest

from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    steps: int = 500  # iterations
    lr: float = 0.1  # step size


@dataclass(frozen=True)
class Outer:
    name: str  # required
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    sigmas: tuple[float, ...] = (0.1, 0.2)


def test_builds_nested_and_coerces_numbers():
    cfg = from_dict(Outer, {"name": "x", "inner": {"lr": 1}, "sigmas": [1, 2.5]})
    assert cfg.inner == Inner(steps=500, lr=1.0)
    assert cfg.sigmas == (1.0, 2.5)
    assert to_dict(cfg)["inner"] == {"steps": 500, "lr": 1.0}


def test_every_mistake_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"mode": "c", "inner": {"stepz": 3, "lr": "fast"}})
    lines = str(err.value).splitlines()
    assert any(line.startswith("name: required") for line in lines)
    assert any(line.startswith("mode: 'c' is not one of") for line in lines)
    assert any(line.startswith("inner.stepz: unknown key") for line in lines)
    assert any(line.startswith("inner.lr: expected a number") for line in lines)
    assert len(lines) == 4


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "data:\n  splits:\n" + "".join(f"    {line}\n" for line in lines)


def test_load_yaml_refuses_alias_bombs_before_building_anything(tmp_path):
    """Issue 18.2: a 1 KB "billion laughs" in data.splits took 30 s and 6 GB, then MemoryError."""
    import time

    from ganviews.core.config import load_yaml

    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(9))
    assert path.stat().st_size < 1024
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"laughs\.yaml: its aliases expand to 1234567913 nodes"):
        load_yaml(path)
    assert time.perf_counter() - start < 1.0
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="its aliases expand without end"):
        load_yaml(path)
    path.write_text(_laughs(4))  # about 12,000 nodes: ordinary alias use still loads
    splits = load_yaml(path)["data"]["splits"]
    assert len(splits["a3"]) == 10 and splits["a3"][0][0][0] == ["x"] * 10
    path.write_text("x: " + "y" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="is too large for a config"):
        load_yaml(path)
