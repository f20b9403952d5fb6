"""``ptmpack compress`` as a user meets it: default output that loads, what the end of a run says, options named
like every other command, the input's codec and protection kept, progress in a log, an unavailable device refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests._support.clirun import assert_clean_error, cli
from tests._support.tiny_models import sample_text, tiny_tree

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("compress-cli")
    tree = tiny_tree(root, "llama")
    (root / "calib.txt").write_text(sample_text(3000, seed=2))
    (root / "eval.txt").write_text(sample_text(400, seed=7))
    return tree, root / "calib.txt", root / "eval.txt"


def _calib(method: str, calib: Path) -> list[object]:
    return [] if method == "rtn" else ["--calib", calib, "--nsamples", "2", "--seqlen", "64", "--epochs", "1"]


def _transformers_perplexity(model_dir: Path, ids: list[int]) -> float:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return math.exp(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())


@pytest.mark.torch
@pytest.mark.parametrize(("method", "rel"), [("rtn", 1e-5), ("gptq", 1e-5), ("affine", 1e-2)])
def test_default_output_loads_in_transformers_with_compressed_tensors(method: str, rel: float, llama: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    """Each method's default (symmetric) output unpacks to a checkpoint transformers + compressed-tensors load,
    with the perplexity ``ptmpack eval`` measures on the package. (affine keeps unmerged transforms as IR
    operators that transformers skips, and says so at the end of the run: its perplexity agrees to 1 %.)
    ptq's activation quantization with channel compensation does not load there, and says so."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    from tokenizers import Tokenizer

    tree, calib, text = llama
    out = tmp_path / "q.ptm"
    run = cli("compress", tree, "-o", out, "--quant", method, *_calib(method, calib), "--progress", "none")
    assert run.code == 0, run.err
    assert " sym" in run.out and "loads with:" in run.out and "compressed-tensors" in run.out
    if method == "affine":  # the message must not promise the same model where transforms stay unmerged
        assert "unmerged AffineQuant transforms" in run.out
    assert cli("unpack", out, "-o", tmp_path / "u").code == 0
    model = tmp_path / "u" / "Model"
    assert json.loads((model / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "weights"]["symmetric"] is True
    ids = Tokenizer.from_file(str(model / "tokenizer.json")).encode(text.read_text()).ids[:200]
    ours = cli("eval", out, "--perplexity", text, "--max-tokens", "200", "--json").json()["perplexity"]
    theirs = _transformers_perplexity(model, ids)
    assert ours == pytest.approx(theirs, rel=rel)


def test_ptq_says_it_runs_in_ptmpack_only(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tree, calib, _ = llama
    run = cli("compress", tree, "-o", tmp_path / "p.ptm", "--quant", "ptq", *_calib("ptq", calib), "--json")
    assert run.code == 0, run.err
    assert run.json()["loads_with"].startswith("ptmpack run/eval:") and "do not run" in run.json()["loads_with"]


def test_asym_is_opt_in_and_says_what_loads_it(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tree, _, _ = llama
    run = cli("compress", tree, "-o", tmp_path / "a.ptm", "--quant", "rtn", "--asym", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["steps"][0]["symmetric"] is False and "unpack --dequantize" in doc["loads_with"]
    assert "#1618" in doc["loads_with"]


def test_progress_lines_in_a_log(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Not on a terminal (auto): plain lines on stderr as the layers go, results on stdout."""
    tree, calib, _ = llama
    run = cli("compress", tree, "-o", tmp_path / "g.ptm", "--quant", "gptq", *_calib("gptq", calib))
    assert run.code == 0, run.err
    lines = [line for line in run.err.splitlines() if line.startswith("ptmpack: gptq layers:")]
    assert len(lines) >= 5 and lines[-1].startswith("ptmpack: gptq layers: 14 of 14 (100%)")
    assert "gptq layers" not in run.out and run.out.startswith("quant gptq")
    quiet = cli("compress", tree, "-o", tmp_path / "n.ptm", "--quant", "rtn", "--progress", "none")
    assert quiet.code == 0 and quiet.err == ""


def test_output_codec_follows_the_input_unless_told(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tree, _, _ = llama
    zstd_in = tmp_path / "in.ptm"
    assert cli("pack", tree, "-o", zstd_in, "--compress", "zstd").code == 0
    assert cli("compress", zstd_in, "-o", tmp_path / "a.ptm", "--quant", "rtn").code == 0
    flags = cli("inspect", tmp_path / "a.ptm", "--json").json()["header"]["flags"]
    assert "COMPRESSED" in flags
    assert cli("compress", zstd_in, "-o", tmp_path / "b.ptm", "--quant", "rtn", "--compress", "none").code == 0
    assert "COMPRESSED" not in cli("inspect", tmp_path / "b.ptm", "--json").json()["header"]["flags"]


def test_encrypted_input_keeps_its_protection(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Issue 18 item 9: compressing an encrypted package never writes plaintext unless asked (--no-encrypt)."""
    tree, _, _ = llama
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    key = tmp_path / "k.key"
    enc = tmp_path / "enc.ptm"
    assert cli("pack", tree, "-o", enc, "--encrypt", "--key-file", key).code == 0
    out = tmp_path / "q.ptm"
    run = cli("compress", enc, "-o", out, "--quant", "rtn", "--key-file", key, "--json")
    assert run.code == 0, run.err
    assert run.json()["encrypted"] is True
    assert "ENCRYPTED" in cli("inspect", out, "--json").json()["header"]["flags"]
    assert_clean_error(cli("verify", out), 4)
    assert cli("verify", out, "--key-file", key).code == 0
    # Without a key the input cannot be read at all.
    assert_clean_error(cli("compress", enc, "-o", tmp_path / "x.ptm", "--quant", "rtn"), 4)
    # Plaintext only on purpose.
    plain = tmp_path / "plain.ptm"
    assert cli("compress", enc, "-o", plain, "--quant", "rtn", "--key-file", key, "--no-encrypt").code == 0
    assert "ENCRYPTED" not in cli("inspect", plain, "--json").json()["header"]["flags"]
    # Other recipients, named like pack's output options.
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "other").code == 0
    other = tmp_path / "o.ptm"
    assert cli("compress", enc, "-o", other, "--quant", "rtn", "--key-file", key,
               "--encrypt-key-file", tmp_path / "other.key").code == 0
    assert cli("verify", other, "--key-file", tmp_path / "other.key").code == 0
    assert_clean_error(cli("verify", other, "--key-file", key), 4)
    # The input's protection with another cipher.
    sm4 = tmp_path / "sm4.ptm"
    run = cli("compress", enc, "-o", sm4, "--quant", "rtn", "--key-file", key, "--cipher", "sm4-gcm")
    if run.code == 6:
        return  # this OpenSSL has no SM4-GCM
    assert run.code == 0, run.err
    assert cli("inspect", sm4, "--key-file", key, "--json").json()["encryption"]["cipher"] == "sm4-gcm"


def test_old_input_key_spellings_still_work_with_a_warning(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tree, _, _ = llama
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    key = tmp_path / "k.key"
    enc = tmp_path / "enc.ptm"
    assert cli("pack", tree, "-o", enc, "--encrypt", "--key-file", key).code == 0
    run = cli("compress", enc, "-o", tmp_path / "q.ptm", "--quant", "rtn", "--in-key-file", key, "--progress", "none")
    assert run.code == 0, run.err
    assert "--in-key-file is deprecated" in run.err and "--key-file" in run.err
    assert "--in-key-file" not in cli("compress", "--help").out  # hidden


def test_unavailable_device_exits_6_for_every_method(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tree, calib, _ = llama
    for method in ("rtn", "gptq", "affine", "ptq"):
        out = tmp_path / f"{method}.ptm"
        run = cli("compress", tree, "-o", out, "--quant", method, *_calib(method, calib), "--device", "cuda")
        assert_clean_error(run, 6)
        assert "cuda" in run.err.lower() and not out.exists()


def test_float_steps_say_the_output_loads_as_before(llama: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tree = llama[0]
    run = cli("compress", tree, "-o", tmp_path / "f.ptm", "--fold-norm", "affine", "--json")
    if run.code == 6:
        pytest.skip(run.err)
    assert run.code == 0, run.err
    assert "float weights" in run.json()["loads_with"]
    assert np.isfinite(run.json()["ratio"])
