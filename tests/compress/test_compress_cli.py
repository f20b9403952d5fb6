"""``ptmpack compress`` from the command line: JSON report, refusals, protection, run/eval/unpack of the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._support.clirun import assert_clean_error, cli
from tests._support.tiny_models import sample_text, tiny_tree


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp("llama"), "llama")


def test_rtn_json_report_then_run_and_eval(llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.ptm"
    run = cli("compress", llama, "-o", out, "--quant", "rtn", "--bits", "4", "--group-size", "32", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["steps"][0]["method"] == "rtn" and doc["output"]["bytes"] < doc["input"]["bytes"]
    top = cli("run", out, "--tokens", "3,4,5,6", "--json")
    assert top.code == 0, top.err
    text = tmp_path / "t.txt"
    text.write_text(sample_text(200, seed=9))
    ev = cli("eval", out, "--perplexity", text, "--json")
    assert ev.code == 0, ev.err and ev.json()["perplexity"] > 1


def test_group_size_refusal_names_the_largest_valid(llama: Path, tmp_path: Path) -> None:
    run = cli("compress", llama, "-o", tmp_path / "q.ptm", "--quant", "rtn", "--group-size", "128")
    assert_clean_error(run, 2)
    assert "--group-size 64" in run.err
    assert not (tmp_path / "q.ptm").exists()


def test_gptq_without_calibration_is_a_usage_error(llama: Path, tmp_path: Path) -> None:
    assert_clean_error(cli("compress", llama, "-o", tmp_path / "q.ptm", "--quant", "gptq"), 2)


def test_encrypted_output_and_input_and_dequantized_unpack(llama: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    calib = tmp_path / "calib.txt"
    calib.write_text(sample_text(1500, seed=3))
    enc = tmp_path / "enc.ptm"
    run = cli("compress", llama, "-o", enc, "--quant", "gptq", "--group-size", "32", "--calib", calib,
              "--nsamples", "2", "--seqlen", "32", "--encrypt", "--passphrase-file", pw, "--json")
    assert run.code == 0, run.err
    assert_clean_error(cli("run", enc, "--tokens", "3,4,5"), 4)  # no key
    assert cli("run", enc, "--tokens", "3,4,5", "--passphrase-file", pw).code == 0
    twice = cli("compress", enc, "-o", tmp_path / "twice.ptm", "--quant", "rtn", "--in-passphrase-file", pw)
    assert_clean_error(twice, 6)
    assert "already quantized" in twice.err
    sealed = tmp_path / "float.ptm"
    assert cli("pack", llama, "-o", sealed, "--encrypt", "--passphrase-file", pw).code == 0
    assert_clean_error(cli("compress", sealed, "-o", tmp_path / "x.ptm", "--quant", "rtn", "--group-size", "32"), 4)
    run = cli("compress", sealed, "-o", tmp_path / "x.ptm", "--quant", "rtn", "--group-size", "32",
              "--in-passphrase-file", pw)
    assert run.code == 0, run.err
    tree = tmp_path / "float"
    assert cli("unpack", enc, "-o", tree, "--passphrase-file", pw, "--dequantize").code == 0
    config = json.loads((tree / "Model" / "config.json").read_text())
    assert "quantization_config" not in config
    assert cli("run", tree, "--tokens", "3,4,5").code == 0


def test_signed_output_verifies(llama: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "ed25519", "-o", tmp_path / "signer").code == 0
    out = tmp_path / "signed.ptm"
    run = cli("compress", llama, "-o", out, "--quant", "rtn", "--group-size", "32", "--sign-key",
              tmp_path / "signer.key")
    assert run.code == 0, run.err
    assert cli("verify", out, "--pubkey", tmp_path / "signer.pub").code == 0


TABLE_ROW_HELP = """
import sys
from ptmpack.compress import methods
methods.METHODS += (methods.Method("mymethod", "quant", "ptmpack.compress.quant.rtn:RtnStep", False, "a new row"),
                    methods.Method("myfold", "fold_norm", "ptmpack.compress.structure.fold_norm:FoldNormStep", False,
                                   "another"))
from ptmpack.cli import main
try:
    main(["compress", "--help"])
except SystemExit:
    pass
print("LOADED:" + ",".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_a_new_row_of_the_methods_table_is_a_choice_of_compress_help() -> None:
    """The CLI's method choices are read from the methods table (through the api), and building them loads
    neither numpy, torch nor rich."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-c", TABLE_ROW_HELP], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    help_text, _, loaded = proc.stdout.rpartition("LOADED:")
    assert "rtn|gptq|affine|ptq|mymethod" in help_text and "affine|unified|myfold" in help_text
    assert not {"numpy", "torch", "rich"} & set(loaded.strip().split(","))
