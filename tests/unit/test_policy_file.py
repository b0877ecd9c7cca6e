"""One policy-file format for `simulate --policy`, `whatif --policy`, the agent's `policy_file`, and
the file `whatif --sweep` writes: what is written reads back to the same policy everywhere."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from natrelay.adapters.mesh.agent_config import ConfigError, load_config
from natrelay.adapters.policy_file import PolicyFileError, load_policy, write_policy
from natrelay.core.presets import PRESETS, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_written_policy_reads_back_equal(tmp_path: Path, name: str) -> None:
    policy = attrs.evolve(preset(name), weights=attrs.evolve(preset(name).weights, latency=0.45))
    path = write_policy(policy, tmp_path / "p.toml", "a comment\nover two lines")
    assert path.read_text().startswith("# a comment\n# over two lines\n[policy]\n")
    assert load_policy(str(path)) == policy


def test_the_agent_config_takes_the_policy_file(tmp_path: Path) -> None:
    policy = attrs.evolve(preset("tailscale"), name="tuned", attempt_timeout_ms=1_234)
    write_policy(policy, tmp_path / "tuned.toml")
    config = tmp_path / "agent.toml"
    config.write_text('node = "a"\npolicy_file = "tuned.toml"\n')
    assert load_config(config).policy == policy
    config.write_text('node = "a"\npolicy_file = "tuned.toml"\n[policy]\nmode = "relay_first"\n')
    with pytest.raises(ConfigError, match="policy_file: give it or a \\[policy\\] table, not both"):
        load_config(config)
    config.write_text('node = "a"\npolicy_file = "missing.toml"\n')
    with pytest.raises(ConfigError, match=r"policy_file: .*missing\.toml: cannot read"):
        load_config(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[policy]\nflavour = 1\n", "p.toml: policy.flavour: not a policy field"),
        ('[policy]\nmode = "sideways"\n', "p.toml: policy: mode='sideways'"),
        ("[policy]\nweights = 3\n", "p.toml: policy.weights: expected a table"),
        ("[policy\n", "p.toml: not valid TOML"),
    ],
)
def test_a_bad_policy_file_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        load_policy(str(path))
    assert str(caught.value).startswith(str(path)) and expected.split(": ", 1)[1] in str(caught.value)


def test_an_unknown_name_is_neither_a_preset_nor_a_file() -> None:
    with pytest.raises(PolicyFileError, match="unknown policy 'fastest': not a preset"):
        load_policy("fastest")
