"""Untrusted YAML is bounded (care.safe_yaml): nested aliases ("billion laughs"), merge-key copies, recursive
aliases, alias floods and deep nesting are refused in one line naming the file and line, in an import mapping,
an instrument (its prompt wording too), a params file and a `--set` value; YAML that uses a few anchors loads."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from care.data.instrument import load_instrument, parse_instrument
from care.errors import CareError, UsageError
from care.params import load_params
from care.safe_yaml import MAX_ALIASES, MAX_DEPTH, load_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "ja-alliance"
pytestmark = pytest.mark.timeout(120)  # a hang guard: an unbounded expansion runs for minutes


def laughs(levels: int = 9, width: int = 10, name: str = "l") -> list[str]:
    """YAML lines defining `{name}{levels-1}`: `width`**levels scalars as a tree, in a few hundred bytes."""
    lines = [f"{name}0: &{name}0 [" + ",".join(['"ha"'] * width) + "]"]
    lines += [f"{name}{i}: &{name}{i} [" + ",".join([f"*{name}{i - 1}"] * width) + "]" for i in range(1, levels)]
    return lines


def _refused_small(call, error=CareError) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes allocated before refusing"
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_billion_laughs_mapping_is_refused_by_care_import_table(run_cli, tmp_path):
    mapping = tmp_path / "mapping.yaml"
    body = ["format: csv", "instrument: wai-sr", "language: ja", "session: {id: session, client_id: client}",
            "turns: {speaker: role, text: text}", *laughs(),
            "speakers: {counselor: [Co], client: [Cl], ignore: *l8}", 'client_ratings: "q{item}"']
    mapping.write_text("\n".join(body) + "\n", "utf-8")
    assert mapping.stat().st_size < 700
    result = run_cli("import", "table", EXAMPLE / "data", "--map", mapping, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {mapping}:10: mapping expands to more than 100000 nodes (nested aliases?)"
    assert not (tmp_path / "out").exists()


def test_an_instrument_with_nested_aliases_in_its_prompt_wording_is_refused(tmp_path):
    text = (ROOT / "care" / "data" / "instruments" / "wai-sr.yaml").read_text("utf-8")
    assert parse_instrument(text, "ok.yaml").name  # the shipped one loads
    path = tmp_path / "inst.yaml"
    path.write_text("\n".join(laughs(8, 12, "w")) + "\n" + text.replace("name:", "x: *w7\nname:", 1), "utf-8")
    message = _refused_small(lambda: load_instrument(path))
    assert message.startswith(f"{path}:") and "expands to more than" in message


def test_params_and_set_values_are_bounded(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(laughs(7, 8, "p")) + "\n", "utf-8")
    message = _refused_small(lambda: load_params(params), UsageError)
    assert message.startswith(f"{params}:6: params file expands to more than")
    flood = "[" + ",".join(["*a"] * (MAX_ALIASES + 1)) + "]"
    message = _refused_small(lambda: load_params(None, [f"train.seed=[&a x, {flood}]"]), UsageError)
    assert message == f"--set train.seed: the value uses more than {MAX_ALIASES} aliases"


@pytest.mark.parametrize("doc, reason", [
    # merge keys copy for real: each level doubles the pairs PyYAML builds
    ("m0: &m0 {a: 1, b: 2}\n" + "".join(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}\n"
                                        for i in range(1, 12)), "expands to more than"),
    ("a: &a [1, *a]\n", "alias inside the node it names"),
    ("a: &a {k: &b [1, *a]}\n", "alias inside the node it names"),
    ("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", f"nested more than {MAX_DEPTH} levels"),
    # an alias stacks its own depth on the place it is used
    ("".join(f"d{i}: &d{i} [{'*d' + str(i - 1) if i else 0}]\n" for i in range(MAX_DEPTH + 5)),
     f"nested more than {MAX_DEPTH} levels"),
    ("a: [b\n", "is not valid YAML"),
])
def test_variants_are_refused_in_one_line(doc, reason):
    message = _refused_small(lambda: load_yaml(doc, "f.yaml", "document"))
    assert message.startswith("f.yaml:") and reason in message


def test_ordinary_anchors_still_load():
    doc = "base: &b {lr: 0.1, seed: 3}\nfold1: *b\nfold2: {<<: *b, seed: 4}\nlist: [&x 1, *x, *x]\n"
    assert load_yaml(doc, "f.yaml", "params") == {"base": {"lr": 0.1, "seed": 3}, "fold1": {"lr": 0.1, "seed": 3},
                                                  "fold2": {"lr": 0.1, "seed": 4}, "list": [1, 1, 1]}
    assert load_instrument("wai-sr").item_ids and load_params(ROOT / "params.yaml").data


def test_no_yaml_is_loaded_around_the_bounded_loader():
    sources = {p: p.read_text("utf-8") for d in ("care", "care_cli", "zenml_registry", "steps", "pipelines")
               for p in (ROOT / d).rglob("*.py") if p != ROOT / "care" / "safe_yaml.py"}
    for needle in ("safe_load", "yaml.load", "full_load", "unsafe_load", "Loader", "yaml.compose", "yaml.parse"):
        assert not [str(p.relative_to(ROOT)) for p, text in sources.items() if needle in text], needle
