"""Config loading: YAML files and ``--set`` overrides."""

from __future__ import annotations

import pytest

from bioprop.config import load_config, yaml_load
from bioprop.errors import BiopropError


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("-2E+3", -2000.0), ("1.5e-3", 1.5e-3), ("3", 3), ("0.1", 0.1), ("1e", "1e")],
)
def test_exponent_floats_without_a_dot_are_floats(text, value) -> None:
    # plain PyYAML (YAML 1.1) returns the string '1e-4' here
    got = yaml_load(text)
    assert got == value and type(got) is type(value)


def test_exponent_floats_reach_the_config_from_files_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-4, weight_decay: 1e-5}\n")
    cfg = load_config(path, ["rule.args.eta_q=1e-9"])
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (3e-4, 1e-5)
    assert cfg.rule.args["eta_q"] == 1e-9


def test_yaml_load_stays_safe() -> None:
    with pytest.raises(Exception, match="could not determine a constructor"):
        yaml_load("!!python/object/apply:os.system ['true']")


def test_a_wrong_type_is_still_an_error() -> None:
    with pytest.raises(BiopropError, match=r"optim\.lr"):
        load_config(None, ["optim.lr=fast"])
