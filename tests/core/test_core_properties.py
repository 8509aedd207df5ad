"""Property tests (hypothesis) of ssmad.core's invariants: config merging and ``--set`` overrides, the closest-name
suggestions of every "unknown ..." message, TOML values on the command line, atomic writes."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import closest
from ssmad.core.files import apply_overrides, atomic_write_text, merge, parse_value

KEYS = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
SCALARS = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text(alphabet="xyz ", max_size=5),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
TREES = st.recursive(SCALARS, lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
CONFIGS = st.dictionaries(KEYS, TREES, max_size=4)


@given(CONFIGS, CONFIGS)
def test_merge_is_idempotent_and_leaves_its_inputs_alone(base, over):
    before = copy.deepcopy((base, over))
    once = merge(base, over)
    assert (base, over) == before
    assert merge(once, over) == once                       # applying the same file twice changes nothing more
    assert merge(base, {}) == base
    for key, value in over.items():                        # what the file sets wins, where it is not a table
        if not isinstance(value, dict):
            assert once[key] == value


@given(st.dictionaries(KEYS, st.dictionaries(KEYS, SCALARS, max_size=3), min_size=1, max_size=3),
       st.integers(-10**9, 10**9))
def test_a_set_override_changes_exactly_its_key(config, value):
    section = sorted(config)[0]
    out = apply_overrides(config, [f"{section}.new_key={value}"])
    assert out[section]["new_key"] == value
    out[section].pop("new_key")
    assert out == config and "new_key" not in config[section]


@given(st.one_of(st.integers(-10**12, 10**12), st.booleans(),
                 st.floats(allow_nan=False, allow_infinity=False)))
def test_command_line_values_read_as_toml(value):
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    assert parse_value(text) == value


@given(st.text(alphabet="abcdefghijklmnop_", min_size=1, max_size=10),
       st.lists(st.text(alphabet="abcdefghijklmnop_", min_size=1, max_size=10), min_size=1, max_size=12, unique=True))
def test_suggestions_list_every_choice_once_the_exact_one_first(word, choices):
    ordered = closest(word, choices)
    assert sorted(ordered) == sorted(choices)
    if word in choices:
        assert ordered[0] == word


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=200))
def test_atomic_writes_read_back_and_leave_no_temporary_file(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.txt"
        atomic_write_text(path, "old")
        atomic_write_text(path, text)
        assert path.read_bytes() == text.encode()
        assert [p.name for p in Path(tmp).iterdir()] == ["f.txt"]


@given(st.floats(min_value=-1e3, max_value=1e7, allow_nan=False))
def test_fmt_time_reads_back_as_the_whole_seconds(seconds):
    from ssmad.core import fmt_time

    parts = [int(p) for p in fmt_time(seconds).split(":")]
    assert len(parts) in (2, 3) and all(0 <= p < 60 for p in parts[1:])
    total = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    assert total == int(max(0.0, seconds))
    assert (len(parts) == 3) == (total >= 3600)


def test_fmt_time_of_an_unknown_duration():
    from ssmad.core import fmt_time

    assert fmt_time(float("inf")) == fmt_time(float("nan")) == "?"


@settings(deadline=None)
@given(precision=st.sampled_from(["auto", "fp32", "bf16", "fp16"]))
def test_tf32_follows_the_precision_asked_and_leaves_cpu_runs_alone(precision):
    """TF32 exactly when the user accepted reduced precision; on a CPU PyTorch's CUDA flags are not touched."""
    import torch

    from ssmad.core.device import allow_tf32

    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert allow_tf32(torch.device("cpu"), precision) is (precision != "fp32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
