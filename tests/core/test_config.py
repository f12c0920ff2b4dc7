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
