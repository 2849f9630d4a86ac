"""Hostile policy files: an alias bomb (billion laughs), a file of 50 MB, deep nesting. Each
is refused at once, at file:line:col, with bounded memory (measured in a child process)."""
from __future__ import annotations


import pytest

from compression.schedule.policy import PolicyError, load_policy
from tests.conftest import load_in_child


def laughs(where: str) -> str:
    """Nine levels of nine aliases (9**9 strings once expanded), at the top or in weights."""
    lines = ['a0: &a0 "lol"']
    for level in range(1, 10):
        refs = ", ".join(f"*a{level - 1}" for _ in range(9))
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = "\n".join(lines)
    if where == "top":
        return bomb + "\nversion: 1\npolicies: []\n"
    return ("version: 1\npruners:\n  p:\n    class: AutomatedGradualPruner\n    initial_sparsity: 0.1\n"
            "    final_sparsity: 0.5\n    weights: " + "[" + ", ".join(["*x"] * 3) + "]\n"
            "x: &x [" + ", ".join(["w"] * 3) + "]\n" + bomb + "\n")


def probe(path) -> dict:
    return load_in_child("compression.schedule.policy:load_policy", path)


@pytest.mark.parametrize("where", ["top", "weights"])
def test_an_alias_bomb_is_refused_at_its_first_alias(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(where))
    result = probe(path)
    assert result["seconds"] < 2 and result["peak_mb"] < 300, result
    assert result["outcome"].startswith(f"{path}:") and "aliases are not accepted" in result["outcome"]
    line = int(result["outcome"].split(":")[1])
    assert "*" in path.read_text().splitlines()[line - 1]            # the line of the alias


def test_a_55_mb_policy_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    names = "\n".join(f"      - module.layer{i}.weight" for i in range(2_200_000))
    path.write_text("version: 1\npruners:\n  p:\n    class: AutomatedGradualPruner\n"
                    "    initial_sparsity: 0.1\n    final_sparsity: 0.5\n    weights:\n" + names)
    assert path.stat().st_size > 50e6
    result = probe(path)
    assert result["seconds"] < 1 and result["peak_mb"] < 300, result
    assert "more than a policy file needs (at most 1,048,576; set PF_MAX_YAML_BYTES" in result["outcome"]


def test_deep_nesting_is_refused_with_its_place(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nx: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(PolicyError, match=rf"^{path}:2:\d+: invalid YAML: nested deeper than 64"):
        load_policy(str(path))


def test_an_anchor_without_alias_and_the_published_files_still_load(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("version: 1\npruners:\n  p: &p\n    class: AutomatedGradualPruner\n"
                    "    initial_sparsity: 0.1\n    final_sparsity: 0.5\n    weights: [fc.weight]\n"
                    "policies:\n  - pruner:\n      instance_name: p\n    starting_epoch: 0\n"
                    "    ending_epoch: 3\n    frequency: 1\n")
    assert load_policy(str(path)).instances["pruners"]["p"]
