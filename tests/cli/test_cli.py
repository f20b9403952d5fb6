"""The command line contract of SPEC §6: commands, --json output, human output, exit codes.

Most checks run ``ptmpack.cli.main`` in process inside click's CliRunner isolation (the
real entry point, with its one error handler and ``sys.exit``); a few run the real
program in a subprocess (``python -m ptmpack.cli`` and the ``ptmpack`` console script),
including one with stdout on a pseudo-terminal.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ptmpack import api
from ptmpack.errors import IntegrityError, KeyAccessError
from ptmpack.format import spec
from tests._support.clirun import assert_clean_error, cli, on_terminal, sub
from tests._support.trees import FIXTURES, REPO, tree_files, write_tree

TINY_BERT = FIXTURES / "tiny-bert"


@pytest.fixture
def pkg(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m.ptm"
    assert cli("pack", tree, "-o", out, "--compress", "zstd:3", "--chunk-size", "4K").code == 0
    return out


# ---------------------------------------------------------------- init


def test_init_bare(tmp_path: Path) -> None:
    run = cli("init", tmp_path / "pkg", "--name", "My Model")
    assert run.code == 0, run.err
    assert run.out.startswith("initialised") and run.err == ""
    root = tmp_path / "pkg"
    for d in ("Model", "Program/Library/environment", "Program/Library/core", "Program/Library/converter",
              "Program/Scripts", "Meta-info"):
        assert (root / d).is_dir(), d
    mgmt = json.loads((root / "Meta-info" / "managementinfo.json").read_text())
    assert mgmt["name"] == "My Model" and mgmt["model_id"] == "my-model"
    assert cli("verify", root).code == 0


def test_init_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "x").write_text("x")
    assert_clean_error(cli("init", tmp_path / "pkg"), 2)
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == ["x"]


def test_init_from_hf_then_full_round_trip_in_a_subprocess(tmp_path: Path) -> None:
    """init --from-hf, pack, verify --json, inspect --json, unpack, all through the real program."""
    tree = tmp_path / "tree"
    run = sub("init", tree, "--from-hf", TINY_BERT, "--name", "tiny-bert")
    assert run.code == 0, run.err
    assert run.out.startswith("initialised")
    for name in ("model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"):
        assert (tree / "Model" / name).read_bytes() == (TINY_BERT / name).read_bytes()
    tech = json.loads((tree / "Meta-info" / "technicalinfo.json").read_text())
    assert "bert" in [a.lower() for a in tech["ptm_info"]["architecture"]]

    out = tmp_path / "tiny.ptm"
    run = sub("pack", tree, "-o", out, "--compress", "zstd", "--json")
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["entries"] == 7 and summary["flags"] == ["COMPRESSED"]  # 4 checkpoint files, graph.json, 2 metadata
    assert summary["output"]["bytes"] == out.stat().st_size

    run = sub("verify", out, "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["ok"] is True and report["entries"] == 7 and "digests" in report["checks"]

    run = sub("inspect", out, "--tensors", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    weights = load_file(str(TINY_BERT / "model.safetensors"))
    assert {t["name"] for t in doc["tensors"]} == set(weights)
    assert doc["totals"]["parameters"] == sum(int(np.prod(w.shape)) for w in weights.values())
    assert doc["metadata"]["managementinfo"]["name"] == "tiny-bert"

    run = sub("unpack", out, "-o", tmp_path / "back")
    assert run.code == 0, run.err
    assert run.out.startswith("unpacked")
    assert tree_files(tmp_path / "back") == tree_files(tree)


def test_console_script(tmp_path: Path) -> None:
    script = shutil.which("ptmpack", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the ptmpack console script is not installed (pip install -e .)")
    run = sub("--version", program=[script])
    assert run.code == 0 and "0." in run.out
    run = sub("verify", tmp_path / "missing.ptm", program=[script])
    assert_clean_error(run, 2)


# ---------------------------------------------------------------- --json and human output


def test_json_outputs_are_one_document_and_nothing_else(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ptm"
    pack = cli("pack", tree, "-o", out, "--json")
    assert pack.code == 0
    assert pack.json()["output"]["path"] == str(out)
    verify = cli("verify", out, "--json")
    assert verify.code == 0 and verify.json()["ok"] is True
    inspect = cli("inspect", out, "--json", "--tensors")
    assert inspect.code == 0
    doc = inspect.json()
    assert doc["type"] == "file" and doc["header"]["entry_count"] == 6
    assert len(doc["tensors"]) == 7
    tree_doc = cli("inspect", tree, "--json").json()
    assert tree_doc["type"] == "tree"
    for run in (pack, verify, inspect):
        assert run.out.lstrip().startswith("{") and run.out.endswith("}\n")


def test_json_verify_of_tree(tree: Path) -> None:
    run = cli("verify", tree, "--json")
    assert run.code == 0
    assert run.json()["kind"] == "tree"


def test_results_go_to_stdout_when_it_is_not_a_tty(pkg: Path, tmp_path: Path) -> None:
    """Results are for stdout, piped or not (`inspect > out.txt` must not write 0 bytes); stderr has progress only."""
    for args in (("verify", pkg), ("inspect", pkg, "--tensors"), ("unpack", pkg, "-o", tmp_path / "u"),
                 ("keygen", "--type", "symmetric", "-o", tmp_path / "k")):
        run = cli(*args, "--progress", "none") if args[0] in ("verify", "unpack") else cli(*args)
        assert run.code == 0, (args, run.err)
        assert run.out.strip(), args
        assert run.err == "", args
        assert "\x1b" not in run.out and "\u2500" not in run.out and "━" not in run.out and "│" not in run.out
    assert cli("verify", pkg).out.startswith("OK ")


def test_human_output_goes_to_stdout_on_a_terminal(pkg: Path) -> None:
    proc, shown = on_terminal("verify", pkg)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in shown
    assert b"OK" not in proc.stderr


# ---------------------------------------------------------------- exit codes


def test_exit_0_and_help(tmp_path: Path) -> None:
    assert cli("--help").code == 0
    assert "pack" in cli("--help").out
    run = cli("--version")
    assert run.code == 0 and "ptmpack" in run.out


@pytest.mark.parametrize(
    "args",
    [
        ("pack", "--no-such-option"),
        ("frobnicate",),
        ("pack", "{tree}"),  # missing -o
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--compress", "lzma"),
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--compress", "zstd:x"),
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--compress", "zstd:99"),
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--chunk-size", "lots"),
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--chunk-size", "1K"),
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--key-file", "{tmp}/k.key"),  # key without --encrypt
        ("pack", "{tree}", "-o", "{tmp}/x.ptm", "--encrypt"),  # --encrypt without a key
        ("pack", "{tree}", "-o", "{tmp}/no/such/dir/x.ptm"),
        ("unpack", "{pkg}"),  # missing -o
        ("keygen", "--type", "rsa", "-o", "{tmp}/k"),
        ("verify", "{tmp}/missing.ptm"),
        ("verify", "{pkg}", "--debug"),  # --debug belongs before the command
    ],
    ids=lambda a: " ".join(a)[:60],
)
def test_exit_2_usage_errors(args: tuple[str, ...], tree: Path, pkg: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    run = cli(*(a.format(tree=tree, pkg=pkg, tmp=tmp_path) for a in args))
    assert run.code == 2, (run.code, run.err)
    assert run.out == "" and "Traceback" not in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_exit_2_existing_targets(tree: Path, pkg: Path, tmp_path: Path) -> None:
    before = pkg.read_bytes()
    assert_clean_error(cli("pack", tree, "-o", pkg), 2)
    assert pkg.read_bytes() == before
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine").write_text("keep")
    assert_clean_error(cli("unpack", pkg, "-o", target), 2)
    assert [p.name for p in target.iterdir()] == ["mine"]
    assert "--force" in cli("unpack", pkg, "-o", target).err
    assert cli("unpack", pkg, "-o", target, "--force").code == 0
    assert not (target / "mine").exists()
    assert cli("pack", tree, "-o", pkg, "--force").code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


def _flip(path: Path, offset: int, mask: int = 1) -> Path:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= mask
    out = path.with_name("bad-" + path.name)
    out.write_bytes(bytes(blob))
    return out


def test_exit_3_corrupt_file(pkg: Path, tmp_path: Path) -> None:
    with api.open_package(pkg) as p:
        last = p.reader.entries[-1]
    bad = _flip(pkg, last.data_offset + 10)
    assert_clean_error(cli("verify", bad), 3)
    assert_clean_error(cli("verify", bad, "--json"), 3)
    assert_clean_error(cli("unpack", bad, "-o", tmp_path / "out"), 3)
    assert not (tmp_path / "out").exists()
    truncated = tmp_path / "cut.ptm"
    truncated.write_bytes(pkg.read_bytes()[:-100])
    for cmd in ("verify", "inspect"):
        run = cli(cmd, truncated)
        assert_clean_error(run, 3)
        assert "ptmpack: error:" in run.err
    garbage = tmp_path / "garbage.ptm"
    garbage.write_bytes(os.urandom(5000))
    run = cli("inspect", garbage, "--json")
    assert_clean_error(run, 6)  # no magic at either end: some other file, not a damaged package
    assert "not a ptmpack package" in run.json()["error"]["message"]


def test_exit_3_in_a_subprocess_without_and_with_debug(pkg: Path) -> None:
    bad = _flip(pkg, len(pkg.read_bytes()) - 30)  # the manifest digest in the trailer
    run = sub("verify", bad)
    assert_clean_error(run, 3)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ptmpack: error:")
    debug = sub("--debug", "verify", bad)
    assert debug.code != 0
    assert "Traceback" in debug.err and "IntegrityError" in debug.err


def test_debug_prints_traceback_and_keeps_exit_code(pkg: Path) -> None:
    bad = _flip(pkg, len(pkg.read_bytes()) - 30)
    run = cli("--debug", "verify", bad)
    assert run.code == IntegrityError.exit_code
    assert "Traceback" in run.err and "IntegrityError" in run.err


def test_exit_4_encrypted_without_and_with_wrong_key(tree: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "right").code == 0
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "wrong").code == 0
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    out = tmp_path / "enc.ptm"
    run = cli("pack", tree, "-o", out, "--encrypt", "--key-file", right, "--compress", "zstd", "--json")
    assert run.code == 0, run.err
    assert run.json()["flags"] == ["ENCRYPTED", "COMPRESSED"]
    for args in (("verify", out), ("unpack", out, "-o", tmp_path / "u")):
        assert_clean_error(cli(*args), 4)
    for args in (("verify", out), ("inspect", out), ("unpack", out, "-o", tmp_path / "u")):
        assert_clean_error(cli(*args, "--key-file", wrong), 4)
    assert not (tmp_path / "u").exists()
    assert "key" in cli("verify", out).err.lower()
    assert cli("verify", out, "--key-file", right).code == 0
    assert cli("unpack", out, "-o", tmp_path / "back", "--key-file", right).code == 0
    assert tree_files(tmp_path / "back") == tree_files(tree)
    # The key file may also come from the environment.
    assert cli("verify", out, env={"PTMPACK_KEY_FILE": str(right)}).code == 0
    assert_clean_error(cli("verify", out, env={"PTMPACK_KEY_FILE": str(wrong)}), 4)
    # A key file that is not a key is a key error too, never a crash.
    junk = tmp_path / "junk.key"
    junk.write_text("not base64 !!\n")
    assert_clean_error(cli("verify", out, "--key-file", junk), 4)
    assert_clean_error(cli("verify", out, "--key-file", tmp_path / "absent.key"), 4)


def test_exit_4_in_a_subprocess(tree: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    out = tmp_path / "enc.ptm"
    assert cli("pack", tree, "-o", out, "--encrypt", "--key-file", tmp_path / "k.key").code == 0
    run = sub("verify", out, "--json")
    assert_clean_error(run, 4)
    assert run.json()["error"]["kind"] == "key"
    debug = cli("--debug", "verify", out)
    assert debug.code == KeyAccessError.exit_code and "Traceback" in debug.err


def test_exit_5_invalid_metadata_and_tree(tree: Path, tmp_path: Path) -> None:
    mgmt = tree / "Meta-info" / "managementinfo.json"
    doc = json.loads(mgmt.read_text())
    doc["version"] = "one"
    mgmt.write_text(json.dumps(doc))
    out = tmp_path / "m.ptm"
    run = cli("pack", tree, "-o", out)
    assert_clean_error(run, 5)
    assert "managementinfo.json" in run.err and "$.version" in run.err
    assert not out.exists()
    assert_clean_error(cli("verify", tree), 5)
    assert_clean_error(cli("verify", tree, "--json"), 5)
    run = sub("pack", tree, "-o", out)
    assert_clean_error(run, 5)
    assert not out.exists()
    doc["version"] = "1.0.0"
    mgmt.write_text(json.dumps(doc))
    (tree / "Model" / "link").symlink_to(tree / "Model" / "config.json")
    assert_clean_error(cli("pack", tree, "-o", out), 5)
    assert not out.exists()


def _with_major(path: Path, major: int) -> Path:
    blob = bytearray(path.read_bytes())
    blob[8:10] = major.to_bytes(2, "little")
    out = path.with_name(f"v{major}-" + path.name)
    out.write_bytes(bytes(blob))
    return out


def test_exit_6_unsupported_major_version(pkg: Path, tmp_path: Path) -> None:
    v2 = _with_major(pkg, 2)
    for args in (("verify", v2), ("inspect", v2, "--json"), ("unpack", v2, "-o", tmp_path / "out")):
        run = cli(*args)
        assert_clean_error(run, 6)
        assert "version 2" in run.err
    assert not (tmp_path / "out").exists()
    assert_clean_error(sub("verify", v2), 6)


def test_exit_6_unknown_flag(pkg: Path) -> None:
    blob = bytearray(pkg.read_bytes())
    blob[12] |= 0x40
    bad = pkg.with_name("flag.ptm")
    bad.write_bytes(bytes(blob))
    assert_clean_error(cli("verify", bad), 6)


# ---------------------------------------------------------------- signing


def test_sign_and_verify_pubkey(tree: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "ed25519", "-o", tmp_path / "signer").code == 0
    assert cli("keygen", "--type", "ed25519", "-o", tmp_path / "other").code == 0
    out = tmp_path / "s.ptm"
    assert cli("pack", tree, "-o", out, "--sign-key", tmp_path / "signer.key").code == 0
    run = cli("verify", out, "--pubkey", tmp_path / "signer.pub", "--json")
    assert run.code == 0
    assert run.json()["signature"] == "verified"
    assert "unchecked" in cli("verify", out, "--json").out
    assert_clean_error(cli("verify", out, "--pubkey", tmp_path / "other.pub"), 3)
    unsigned = tmp_path / "u.ptm"
    assert cli("pack", tree, "-o", unsigned).code == 0
    assert_clean_error(cli("verify", unsigned, "--pubkey", tmp_path / "signer.pub"), 3)
    # a private key where a public one belongs (and the other way round) is a key error
    assert_clean_error(cli("verify", out, "--pubkey", tmp_path / "signer.key"), 4)
    assert_clean_error(cli("pack", tree, "-o", tmp_path / "x.ptm", "--sign-key", tmp_path / "signer.pub"), 4)


# ---------------------------------------------------------------- keygen


def test_keygen_symmetric_file_and_mode(tmp_path: Path) -> None:
    run = cli("keygen", "--type", "symmetric", "-o", tmp_path / "k")
    assert run.code == 0 and run.err == ""
    key = tmp_path / "k.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = key.read_bytes()
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    assert len(base64.b64decode(text.strip(), validate=True)) == 32
    assert not (tmp_path / "k.pub").exists()
    assert str(key) in run.out


@pytest.mark.parametrize("kind", ["x25519", "ed25519"])
def test_keygen_pairs_files_and_modes(kind: str, tmp_path: Path) -> None:
    run = cli("keygen", "--type", kind, "-o", tmp_path / "k")
    assert run.code == 0
    secret, public = tmp_path / "k.key", tmp_path / "k.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert secret.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    assert cli("keygen", "--type", "x25519", "-o", tmp_path / "k").code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for kind in ("x25519", "ed25519", "symmetric"):
        assert_clean_error(cli("keygen", "--type", kind, "-o", tmp_path / "k"), 2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_recipient_and_identity(tree: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "x25519", "-o", tmp_path / "dev").code == 0
    assert cli("keygen", "--type", "x25519", "-o", tmp_path / "other").code == 0
    out = tmp_path / "r.ptm"
    assert cli("pack", tree, "-o", out, "--encrypt", "--recipient", tmp_path / "dev.pub").code == 0
    assert cli("verify", out, "--identity", tmp_path / "dev.key").code == 0
    assert_clean_error(cli("verify", out, "--identity", tmp_path / "other.key"), 4)
    assert_clean_error(cli("verify", out, "--identity", tmp_path / "dev.pub"), 4)


def test_inspect_json_of_encrypted_package_names_slots(tree: Path, tmp_path: Path) -> None:
    assert cli("keygen", "--type", "symmetric", "-o", tmp_path / "k").code == 0
    out = tmp_path / "e.ptm"
    assert cli("pack", tree, "-o", out, "--encrypt", "--key-file", tmp_path / "k.key").code == 0
    doc = cli("inspect", out, "--json", "--key-file", tmp_path / "k.key").json()
    assert doc["header"]["flags"] == ["ENCRYPTED"]
    assert doc["encryption"]["cipher"] == "aes-256-gcm"
    assert any("keyfile" in s for s in doc["encryption"]["slots"])
    assert len(doc["entries"]) == 6
    assert out.read_bytes()[:8] == spec.MAGIC


def test_exit_7_apply_on_the_wrong_base(tmp_path: Path) -> None:
    """SPEC §6 exit 7 (reachable once ``diff``/``apply`` exist; skipped before)."""
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_tree(tmp_path / name, seed=seed)
        assert cli("pack", tmp_path / name, "-o", tmp_path / f"{name}.ptm").code == 0
    run = cli("diff", tmp_path / "a.ptm", tmp_path / "b.ptm", "-o", tmp_path / "d.ptm", "--residual")
    assert run.code == 0, run.err
    run = cli("apply", tmp_path / "c.ptm", tmp_path / "d.ptm", "-o", tmp_path / "n.ptm")
    assert_clean_error(run, 7)
    assert not (tmp_path / "n.ptm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ptmpack-tmp-")]


def test_every_visible_option_is_documented() -> None:
    """README or docs/CLI.md names every long option that ``--help`` shows, so a new option cannot ship
    undocumented (issue 15: the distribution options had been missing from both)."""
    import click

    from ptmpack.cli import cli as root

    docs = (REPO / "README.md").read_text() + (REPO / "docs" / "CLI.md").read_text()
    ctx = click.Context(root)

    def commands(cmd: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield from commands(cmd.get_command(ctx, sub), f"{name} {sub}".strip())
        else:
            yield name, cmd

    missing = {name: [o for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts
                      if o.startswith("--") and o != "--help" and o not in docs]
               for name, cmd in commands(root, "")}
    assert not {k: v for k, v in missing.items() if v}, missing
    for option in ("--pubkey", "--base", "--timeout", "--split-size", "--plain-http", "login", "logout",
                   "cache ls"):
        assert option in (REPO / "README.md").read_text() and option in (REPO / "docs" / "CLI.md").read_text()


@pytest.mark.parametrize("argv", [("pack", "tree"), ("bogus",), ("--bogus",), ("keygen", "--type", "foo", "-o", "k"),
                                  ("cache", "bogus"), ("verify",)])
def test_usage_errors_are_one_line_naming_the_help(argv: tuple[str, ...]) -> None:
    """A usage error click itself catches is one ``ptmpack: error:`` line on stderr (not click's four-line
    usage block), exit 2, naming the help of the command that refused it."""
    run = cli(*argv)
    assert_clean_error(run, 2)
    assert run.out == "" and len(run.err.splitlines()) == 1, run.err
    assert run.err.startswith("ptmpack: error: ") and "--help'" in run.err


@pytest.mark.parametrize("argv", [(), ("cache",), ("graph",)])
def test_a_group_alone_shows_its_help(argv: tuple[str, ...]) -> None:
    """``ptmpack`` (or a command group) without a subcommand shows the whole help, not an error line quoting it."""
    run = cli(*argv)
    shown = run.out + run.err
    assert run.code in (0, 2) and shown.startswith("Usage: ptmpack") and "Commands:" in shown, shown
    assert "ptmpack: error:" not in shown


def test_counts_agree_with_their_nouns(tmp_path: Path) -> None:
    from ptmpack.cli.output import count

    assert (count(0, "blob"), count(1, "blob"), count(2, "file")) == ("0 blobs", "1 blob", "2 files")
    assert cli("init", tmp_path / "t", "--from-hf", FIXTURES / "tiny-bert").code == 0
    run = cli("graph", "check", tmp_path / "t")
    assert run.code == 0 and ": 1 graph, " in run.out, run.out  # was "1 graphs"
