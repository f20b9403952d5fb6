"""The Step protocol and the typed step records (issue 17, items 2 and 4).

Every step is checked before the input is touched, and a record's ``to_json()`` is the object
``technicalinfo.compression.steps`` and ``compress --json`` hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptmpack.compress.pipeline import compress, load_step
from ptmpack.compress.report import Quality, QuantScheme, StepRecord
from ptmpack.compress.spec import CompressSpec
from ptmpack.config import PackConfig
from ptmpack.errors import UnsupportedError, UsageError


def test_a_record_writes_its_typed_fields_and_details_as_one_json_object() -> None:
    record = StepRecord("quant", "rtn", Quality("perplexity", 12.5, 13.0, {"tokens": np.int64(64)}),
                        QuantScheme(4, "compressed-tensors/pack-quantized", "channel", False),
                        details={"layers": [{"rel_error": np.float32(0.5)}], "kept": np.zeros(3)}).timed(1.23456)
    doc = record.to_json()
    assert doc == {"step": "quant", "method": "rtn", "bits": 4, "group_size": "channel", "symmetric": False,
                   "format": "compressed-tensors/pack-quantized", "layers": [{"rel_error": 0.5}],
                   "quality": {"before": 12.5, "after": 13.0, "metric": "perplexity", "tokens": 64},
                   "wall_seconds": 1.235}
    json.dumps(doc)  # numpy scalars became numbers, the array a step kept for itself is gone


def test_a_scheme_without_groups_or_symmetry_writes_neither() -> None:
    """PTQ stores per channel and does not choose symmetry: its record has no such keys."""
    assert QuantScheme(8, "f").to_json() == {"bits": 8, "format": "f"}


def test_every_step_is_checked_before_the_input_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks refuse a run whose input does not even exist: nothing was unpacked first.

    No shipped method refuses a valid spec in its own check any more (every pair composes), so the
    step's check is made to refuse: what is tested is that the pipeline asks it before any work.
    """
    from ptmpack.compress.quant.rtn import RtnStep

    def refuse(self: RtnStep, spec: CompressSpec) -> None:
        raise UnsupportedError(f"refused {spec.quant} in check")

    missing = tmp_path / "no-such.ptm"
    monkeypatch.setattr(RtnStep, "check", refuse)
    with pytest.raises(UnsupportedError, match="refused rtn in check"):
        compress(missing, tmp_path / "x.ptm", CompressSpec(quant="rtn"), PackConfig())
    monkeypatch.undo()
    with pytest.raises(UsageError, match="--fold-norm unified needs calibration text"):
        compress(missing, tmp_path / "x.ptm", CompressSpec(quant="rtn", fold_norm="unified"), PackConfig())
    with pytest.raises(UsageError, match="no such package file or tree"):
        compress(missing, tmp_path / "x.ptm", CompressSpec(quant="rtn"), PackConfig())
    assert not (tmp_path / "x.ptm").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_load_step_builds_the_class_the_table_names() -> None:
    from ptmpack.compress.quant.rtn import RtnStep

    assert isinstance(load_step("quant", CompressSpec(quant="rtn")), RtnStep)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_every_method_reports_quality_on_the_same_held_out_text(tmp_path: Path, kind: str) -> None:
    """One measurement for every step: the float model measured before RTN, GPTQ, PTQ and a prune step is
    measured on the same text, so the "before" figures agree and the records name the same text."""
    pytest.importorskip("torch")
    from tests._support.tiny_models import sample_text, tiny_tree

    tree = tiny_tree(tmp_path / "model", kind)
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(3000, seed=5), encoding="utf-8")
    common = {"calib": calib, "nsamples": 2, "seqlen": 32, "epochs": 0}
    specs = [CompressSpec(quant="rtn", **common), CompressSpec(quant="gptq", **common),
             CompressSpec(quant="ptq", **common),
             CompressSpec(prune="ffn", flops_budget=0.8, prune_method="magnitude", **common)]
    first = [compress(tree, tmp_path / f"{i}.ptm", spec, PackConfig()).steps[0] for i, spec in enumerate(specs)]
    qualities = [r.quality for r in first]
    assert all(q is not None for q in qualities)
    metric = "perplexity" if kind == "llama" else "embedding_cosine_to_before"
    assert {(q.metric, q.about["text"], q.about["lines"]) for q in qualities if q} == {(metric, "calib.txt", 16)}
    befores = [q.before for q in qualities if q]
    assert befores == pytest.approx([befores[0]] * len(befores), rel=1e-6)
    assert all(q.after is not None and np.isfinite(q.after) for q in qualities if q)


def test_a_quantizer_without_calibration_text_is_not_measured(tmp_path: Path) -> None:
    from tests._support.tiny_models import tiny_tree

    (record,) = compress(tiny_tree(tmp_path / "m"), tmp_path / "x.ptm", CompressSpec(quant="rtn"),
                         PackConfig()).steps
    assert record.quality is not None and record.quality.metric is None and "flops_before" not in record.details
