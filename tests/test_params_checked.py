"""Params are checked before any work starts: bad `--set` YAML is a usage error; non-finite and
out-of-range numbers are refused naming the key (exit 2, one line)."""

from __future__ import annotations

import pytest

from care.errors import UsageError
from care.params import load_params


@pytest.mark.parametrize("assignment, key", [
    ("train.lr=nan", "train.lr"), ("train.lr=.inf", "train.lr"), ("train.lr=0", "train.lr"),
    ("train.batch_size=0", "train.batch_size"), ("model.max_length=0", "model.max_length"),
    ("data.limit=0", "data.limit"), ("cv.folds=1", "cv.folds"), ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("lora.dropout=1", "lora.dropout"), ("eval.warnings.min_digit_mass=2", "eval.warnings.min_digit_mass"),
    ("release.max_logit_diff=-1", "release.max_logit_diff"),
])
def test_out_of_range_numbers_are_refused_naming_the_key(assignment, key):
    with pytest.raises(UsageError) as info:
        load_params(None, [assignment])
    message = str(info.value)
    assert key in message and "\n" not in message and info.value.exit_code == 2


@pytest.mark.parametrize("assignment", ["train.lr=[1, 2", "model.tiny={a: b: c}", "x.y='unclosed"])
def test_bad_yaml_in_set_is_a_one_line_usage_error(assignment):
    with pytest.raises(UsageError, match="not valid YAML") as info:
        load_params(None, [assignment])
    assert "\n" not in str(info.value)


def test_train_refuses_bad_params_before_any_work(run_cli, tmp_path):
    result = run_cli("train", "--params", "params.ci.yaml", "--set", "train.lr=nan", "--metrics-dir", str(tmp_path / "m"))
    assert result.exit_code == 2 and "train.lr" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


def test_the_literal_choices_are_what_the_code_knows():
    """model.preset and model.context_policy are checked only by their Literal: each choice must be one the
    code handles (care.model.presets.PRESETS; care.model.prompts keeps the end unless keep_start_end)."""
    from typing import get_args

    from care.model.presets import PRESETS
    from care.model.prompts import PromptConfig
    from care.params import ContextPolicy, ModelParams

    assert set(get_args(ModelParams.model_fields["preset"].annotation)) == set(PRESETS)
    assert set(get_args(ContextPolicy)) == {"keep_end", "keep_start_end"}
    assert PromptConfig.model_fields["context_policy"].annotation == ModelParams.model_fields["context_policy"].annotation
