"""YAML from users is parsed without aliases: a few hundred bytes of nested aliases once expanded to gigabytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dosepred.engine.config import DEFAULTS, ConfigError, load_config
from dosepred.io import safe_yaml
from dosepred.io.errors import PatientDataError
from dosepred.io.roi_names import RoiNames
from dosepred.metrics.clinical import load_objectives

LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 9))  # 10^9 x's from 600 bytes


def test_aliases_and_unsafe_tags_are_refused_plain_yaml_is_read() -> None:
    assert safe_yaml.load("a: 1\nb: [2, 3]\n") == {"a": 1, "b": [2, 3]}
    for text in (LAUGHS, "a: !!python/object/apply:os.system [ls]\n"):
        with pytest.raises(yaml.YAMLError):
            safe_yaml.load(text)


@pytest.mark.parametrize(("read", "error", "message"), [
    (lambda path: load_config(path, defaults=DEFAULTS), ConfigError, "aliases"),
    (lambda path: RoiNames.load(path), PatientDataError, "cannot read the ROI name table"),
    (lambda path: load_objectives(path), PatientDataError, "cannot read the plan objectives"),
])
def test_every_users_yaml_refuses_a_billion_laughs(read, error: type, message: str, tmp_path: Path) -> None:
    (tmp_path / "laughs.yaml").write_text(LAUGHS)
    with pytest.raises(error, match=message):
        read(tmp_path / "laughs.yaml")
