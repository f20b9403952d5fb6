"""Messages of ``compress`` that must not mislead (issue 18, item 16)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ptmpack.compress.quant.linear import largest_valid_group
from tests._support.clirun import assert_clean_error, cli
from tests.distribution.packages import write_model_tree


def test_group_size_hint_below_8_names_a_size_that_fits() -> None:
    """``--group-size 7`` used to hint that no power of two fits, although 8, 16, 32 and 64 divide every width."""
    assert largest_valid_group([64, 256, 768], 7) == 8
    assert largest_valid_group([64, 256, 768], 100) == 64
    assert largest_valid_group([12, 20], 64) is None


def test_missing_config_json_names_the_input_not_the_scratch_copy(tmp_path: Path) -> None:
    tree = write_model_tree(tmp_path / "model", rows=64)
    (tree / "Model" / "config.json").unlink()
    run = cli("compress", tree, "-o", tmp_path / "out.ptm", "--quant", "rtn")
    assert_clean_error(run, 5)
    assert str(tree / "Model" / "config.json") in run.err and ".ptmpack-compress-" not in run.err, run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    shutil.rmtree(tree)
