"""The smaller things a user meets (issue 15 item 7, issue 18 items 12 and 17), one test each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests._support.clirun import assert_clean_error, cli, sub
from tests._support.trees import FIXTURES, REPO

TINY_BERT = FIXTURES / "tiny-bert"
HOSTILE = "evil \x1b[2J\x1b]8;;http://x.invalid\x07link\x1b]8;;\x07 \u202eRTL [bold red]RED[/]"


@pytest.fixture
def bert_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    assert cli("init", tree, "--from-hf", TINY_BERT, "--name", "tiny-bert").code == 0
    return tree


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


# ---------------------------------------------------------------- streams


def test_inspect_tensors_greps_and_cuts(bert_tree: Path, tmp_path: Path) -> None:
    """`inspect --tensors | grep NAME` finds each tensor on one line, never cut to 80 columns or boxed."""
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    run = cli("inspect", pkg, "--tensors", env={"COLUMNS": "40"})
    assert run.code == 0, run.err
    names = {t["name"] for t in cli("inspect", pkg, "--tensors", "--json").json()["tensors"]}
    lines = run.out.splitlines()
    for name in names:
        found = [line for line in lines if line.split("\t")[0] == name]
        assert len(found) == 1, name
        assert len(found[0].split("\t")) == 4  # name, dtype, shape, bytes: cut -f works
    assert "…" not in run.out and "│" not in run.out


def test_inspect_output_redirected_to_a_file_is_not_empty(bert_tree: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    with (tmp_path / "out.txt").open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "ptmpack.cli", "inspect", str(pkg)], stdout=f,
                              stderr=subprocess.PIPE, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0 and (tmp_path / "out.txt").stat().st_size > 200


# ---------------------------------------------------------------- inspect and verify


def test_inspect_of_a_quantized_package_names_the_scheme(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from tests._support.tiny_models import tiny_tree

    tree = tiny_tree(tmp_path, "llama")
    out = tmp_path / "q.ptm"
    assert cli("compress", tree, "-o", out, "--quant", "rtn", "--group-size", "32").code == 0
    run = cli("inspect", out)
    assert run.code == 0, run.err
    fields = dict(line.split("\t", 1) for line in run.out.splitlines() if "\t" in line)
    assert fields["quantization"].startswith("rtn W4 group 32 symmetric")
    assert "stored elements" in fields and "parameters" not in fields
    doc = cli("inspect", out, "--json").json()  # the JSON tells the same: stored elements and the scheme
    assert int(fields["stored elements"]) == doc["totals"]["stored_elements"] and "parameters" not in doc["totals"]
    assert doc["quantization"]["method"] == "rtn" and doc["quantization"]["symmetric"] is True


def test_unpack_dequantize_reports_the_bytes_it_wrote(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from ptmpack.cli.output import human_size
    from tests._support.tiny_models import tiny_tree
    from tests._support.trees import tree_files

    out = tmp_path / "q.ptm"
    assert cli("compress", tiny_tree(tmp_path, "llama"), "-o", out, "--quant", "rtn", "--group-size", "32").code == 0
    run = cli("unpack", out, "-o", tmp_path / "float", "--dequantize")
    assert run.code == 0, run.err
    files = tree_files(tmp_path / "float")
    written = sum(len(data) for data in files.values())
    assert run.out.startswith("unpacked ") and f"{len(files)} files, {human_size(written)} into" in run.out, run.out


def test_encrypted_package_without_a_key(bert_tree: Path, tmp_path: Path) -> None:
    """inspect shows the clear header, flags and key-slot kinds; verify says how to go on (a key, or --pubkey)."""
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    assert cli("keygen", "--type", "ed25519", "-o", tmp_path / "sig").code == 0
    enc = tmp_path / "enc.ptm"
    assert cli("pack", bert_tree, "-o", enc, "--encrypt", "--key-file", tmp_path / "k.key", "--passphrase-file",
               _passphrase(tmp_path), "--sign-key", tmp_path / "sig.key").code == 0
    run = cli("inspect", enc)
    assert run.code == 0, run.err
    fields = dict(line.split("\t", 1) for line in run.out.splitlines() if "\t" in line)
    assert fields["flags"] == "ENCRYPTED, SIGNED" and fields["cipher"] == "aes-256-gcm"
    assert "keyfile" in fields["key slots"] and "passphrase" in fields["key slots"]
    assert fields["manifest"].startswith("sealed") and fields["signed by"] != "-"
    run = cli("verify", enc)
    assert_clean_error(run, 4)
    assert "--pubkey alone" in run.err and "keyfile" in run.err and "signed" in run.err
    assert cli("verify", enc, "--pubkey", tmp_path / "sig.pub").code == 0


def _passphrase(tmp_path: Path) -> Path:
    p = tmp_path / "pass.txt"
    p.write_text("correct horse battery staple\n")
    return p


def test_a_dsa_key_is_refused_without_a_library_warning(bert_tree: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = dsa.generate_private_key(key_size=1024)
    (tmp_path / "dsa.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    run = sub("verify", pkg, "--pubkey", tmp_path / "dsa.pub", env={"PYTHONWARNINGS": "default"})
    assert_clean_error(run, 4)
    assert "DSA public key" in run.err and "Warning" not in run.err


def test_inspect_of_a_safetensors_file_says_it_is_not_a_package() -> None:
    run = cli("inspect", TINY_BERT / "model.safetensors")
    assert_clean_error(run, 6)
    assert "not a ptmpack package" in run.err and "tamper" not in run.err


# ---------------------------------------------------------------- unpack, init, schemas


def test_unpack_creates_missing_parents(bert_tree: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    target = tmp_path / "a" / "b" / "c"
    run = cli("unpack", pkg, "-o", target)
    assert run.code == 0, run.err
    assert (target / "Model" / "model.safetensors").is_file()


def test_schema_errors_are_reported_at_once(bert_tree: Path, tmp_path: Path) -> None:
    mgmt = bert_tree / "Meta-info" / "managementinfo.json"
    doc = json.loads(mgmt.read_text())
    doc.update(version="one", license="not a licence!", extra=1)
    mgmt.write_text(json.dumps(doc))
    tech = bert_tree / "Meta-info" / "technicalinfo.json"
    tdoc = json.loads(tech.read_text())
    tdoc["parameters"] = -5
    tech.write_text(json.dumps(tdoc))
    for args in (("pack", bert_tree, "-o", tmp_path / "x.ptm"), ("verify", bert_tree)):
        run = cli(*args, "--json")
        assert_clean_error(run, 5)
        message = run.json()["error"]["message"]
        for where in ("$.version", "$.license", "$.extra", "technicalinfo.json: $.parameters"):
            assert where in message, (args, where, message)
        assert message.startswith("4 problems")


def test_each_missing_field_is_named_once(bert_tree: Path) -> None:
    """Four required fields missing are four problems naming four fields (not the first one four times)."""
    (bert_tree / "Meta-info" / "managementinfo.json").write_text(json.dumps({"name": 5}))
    run = cli("verify", bert_tree, "--json")
    assert_clean_error(run, 5)
    problems = run.json()["error"]["message"].removeprefix("5 problems: ").split("; ")
    assert len(problems) == len(set(problems)) == 5, problems
    for field in ("$.model_id", "$.version", "$.provider", "$.created", "$.name: 5 is not of type"):
        assert any(field in p for p in problems), (field, problems)


def test_init_sets_provider_license_and_version(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    run = cli("init", tree, "--from-hf", TINY_BERT, "--provider", "ACME Labs", "--license", "Apache-2.0",
              "--model-version", "2.1.0")
    assert run.code == 0, run.err
    mgmt = json.loads((tree / "Meta-info" / "managementinfo.json").read_text())
    assert (mgmt["provider"], mgmt["license"], mgmt["version"]) == ("ACME Labs", "Apache-2.0", "2.1.0")
    bad = cli("init", tmp_path / "u", "--model-version", "two")
    assert_clean_error(bad, 5)
    assert "$.version" in bad.err and not (tmp_path / "u").exists()


def test_packs_are_byte_reproducible_under_source_date_epoch(bert_tree: Path, tmp_path: Path) -> None:
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    for i in (1, 2):
        assert cli("pack", bert_tree, "-o", tmp_path / f"r{i}.ptm", "--compress", "zstd", env=env).code == 0
    assert (tmp_path / "r1.ptm").read_bytes() == (tmp_path / "r2.ptm").read_bytes()
    ids = {cli("inspect", tmp_path / f"r{i}.ptm", "--json").json()["header"]["package_id"] for i in (1, 2)}
    (bert_tree / "Model" / "vocab.txt").write_text("changed\n")
    assert cli("pack", bert_tree, "-o", tmp_path / "r3.ptm", "--compress", "zstd", env=env).code == 0
    assert cli("inspect", tmp_path / "r3.ptm", "--json").json()["header"]["package_id"] not in ids  # from content
    # Without SOURCE_DATE_EPOCH every package gets a fresh random id.
    for i in (4, 5):
        assert cli("pack", bert_tree, "-o", tmp_path / f"r{i}.ptm", env={"SOURCE_DATE_EPOCH": None}).code == 0
    assert (tmp_path / "r4.ptm").read_bytes() != (tmp_path / "r5.ptm").read_bytes()
    # Encrypted packages keep random ids and nonces even under SOURCE_DATE_EPOCH (FORMAT.md §12).
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    for i in (6, 7):
        assert cli("pack", bert_tree, "-o", tmp_path / f"r{i}.ptm", "--encrypt", "--key-file", tmp_path / "k.key",
                   env=env).code == 0
    assert (tmp_path / "r6.ptm").read_bytes()[28:44] != (tmp_path / "r7.ptm").read_bytes()[28:44]


# ---------------------------------------------------------------- issue 18 item 12: escaping


def test_hostile_registry_annotations_are_escaped(bert_tree: Path, tmp_path: Path) -> None:
    """Annotations an oci:DIR layout (or a registry) carries reach the screen escaped: no ESC/OSC/bidi, no markup."""
    mgmt = bert_tree / "Meta-info" / "managementinfo.json"
    doc = json.loads(mgmt.read_text())
    doc["description"] = HOSTILE
    mgmt.write_text(json.dumps(doc))
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    ref = f"oci:{tmp_path / 'layout'}:v1"
    assert cli("push", pkg, ref).code == 0
    plain = cli("ls", ref)
    assert plain.code == 0, plain.err
    _no_raw_controls(plain.out)
    assert "\\x1b[2J" in plain.out and "[bold red]RED[/]" in plain.out and "\\u202e" in plain.out
    drawn = cli("ls", ref, env={"FORCE_COLOR": "1", "COLUMNS": "400"})  # the rich path, as on a terminal
    assert drawn.code == 0, drawn.err
    assert "\x1b[2J" not in drawn.out and "\x1b]8" not in drawn.out and "\u202e" not in drawn.out
    assert "[bold red]RED[/]" in drawn.out  # shown literally, not interpreted as markup
    assert json.loads(cli("ls", ref, "--json").out)["package"]["annotations"][
        "org.opencontainers.image.description"] == HOSTILE  # JSON keeps the exact value (json escapes it)


def test_error_messages_with_escape_sequences_are_escaped(tmp_path: Path) -> None:
    hostile = tmp_path / "name\x1b[2J\x1b]0;pwned\x07.ptm"
    hostile.write_bytes(b"\x1b[2J not a package at all " * 10)
    run = cli("verify", hostile)
    assert_clean_error(run, 6)
    _no_raw_controls(run.err)
    assert "\\x1b[2J" in run.err
    run = cli("verify", hostile, "--json")
    assert "\x1b" not in run.out  # JSON escapes it as \u001b
    assert "\x1b[2J" in run.json()["error"]["message"]


# ---------------------------------------------------------------- issue 18 item 17: README quick start


def test_readme_quick_start_import_works(bert_tree: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    readme = (REPO / "README.md").read_text()
    assert "from ptmpack.package import" not in readme
    assert "from ptmpack import api, open_package" in readme
    code = ("from ptmpack import api, open_package\n"
            f"with open_package({str(pkg)!r}) as pkg:\n"
            "    names = [t.name for _, t in pkg.tensors()]\n"
            "print(len(names))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0 and int(proc.stdout) > 0, proc.stderr


def test_graph_show_piped_is_indented_text(bert_tree: Path) -> None:
    run = cli("graph", "show", bert_tree)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("tiny-bert") and any(line.startswith("  main graph") for line in lines)
    assert not any(c in run.out for c in "├└│━─"), "no tree guides or box drawing when piped"


def test_ls_of_a_repository_prints_one_tag_a_line(bert_tree: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "m.ptm"
    assert cli("pack", bert_tree, "-o", pkg).code == 0
    layout = tmp_path / "layout"
    for tag in ("v1", "v2", "latest"):
        assert cli("push", pkg, f"oci:{layout}:{tag}").code == 0
    run = cli("ls", f"oci:{layout}")
    assert run.code == 0, run.err
    assert sorted(run.out.splitlines()) == ["latest", "v1", "v2"]  # `| wc -l` counts tags
