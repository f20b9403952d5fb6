"""Every command's ``--json`` is one document on stdout that validates against ``schemas/cli/<command>``,
on success and on failure; README's CI recipe (``jq -e '.ok'``) reads a tampered package as ``ok: false``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests._support.clirun import Run, cli
from tests._support.trees import FIXTURES, REPO

SCHEMAS = REPO / "schemas" / "cli"
TINY_BERT = FIXTURES / "tiny-bert"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def check(command: str, run: Run, ok: bool) -> dict[str, Any]:
    """``run`` printed exactly one document, valid against ``command``'s schema, with the expected ``ok``."""
    doc = run.json()
    assert isinstance(doc, dict)
    schema = json.loads((SCHEMAS / f"{command.replace(' ', '-')}.schema.json").read_text())
    Draft202012Validator(schema, registry=REGISTRY).validate(doc)
    assert doc["command"] == command and doc["ok"] is ok, (doc, run.err)
    assert (run.code == 0) is ok
    if not ok:
        assert doc["error"]["exit_code"] == run.code
    return doc


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    tree = root / "tree"
    assert cli("init", tree, "--from-hf", TINY_BERT, "--name", "tiny-bert").code == 0
    pkg = root / "m.ptm"
    assert cli("pack", tree, "-o", pkg, "--compress", "zstd").code == 0
    return {"root": root, "tree": tree, "pkg": pkg}


def test_schemas_are_valid_and_one_per_command() -> None:
    from ptmpack.cli import COMMANDS

    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    expected = (set(COMMANDS) - {"graph"}) | {"graph-check", "common"}
    assert names == expected
    for path in SCHEMAS.glob("*.schema.json"):
        Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_container_commands(work: dict[str, Path]) -> None:
    root, tree, pkg = work["root"], work["tree"], work["pkg"]
    doc = check("init", cli("init", root / "t2", "--json"), True)
    assert doc["output"]["kind"] == "tree"
    check("init", cli("init", tree, "--json"), False)  # not empty
    doc = check("pack", cli("pack", tree, "-o", root / "p.ptm", "--json"), True)
    assert doc["output"]["sha256"] and doc["output"]["bytes"] == (root / "p.ptm").stat().st_size
    assert doc["input"]["kind"] == "tree"
    check("pack", cli("pack", root / "missing", "-o", root / "x.ptm", "--json"), False)
    check("unpack", cli("unpack", pkg, "-o", root / "u", "--json"), True)
    check("unpack", cli("unpack", pkg, "-o", root / "u", "--json"), False)  # exists
    doc = check("verify", cli("verify", pkg, "--json"), True)
    assert "decrypted" not in doc  # never encrypted, so nothing was decrypted
    check("inspect", cli("inspect", pkg, "--tensors", "--json"), True)
    doc = check("inspect", cli("inspect", tree, "--json"), True)
    assert doc["totals"]["parameters"] > 0 and "stored_elements" not in doc["totals"] and "quantization" not in doc
    doc = check("inspect", cli("inspect", TINY_BERT / "model.safetensors", "--json"), False)
    assert doc["error"]["kind"] == "unsupported" and "not a ptmpack package" in doc["error"]["message"]
    check("keygen", cli("keygen", "--type", "ed25519", "-o", root / "sig", "--json"), True)
    check("keygen", cli("keygen", "--type", "ed25519", "-o", root / "sig", "--json"), False)  # never overwrites
    check("graph check", cli("graph", "check", pkg, "--json"), True)
    check("graph check", cli("graph", "check", root / "missing.ptm", "--json"), False)
    # A usage error that click itself catches is a document too.
    check("pack", cli("pack", tree, "--json"), False)


def test_encrypted_verify_reports_decryption(work: dict[str, Path]) -> None:
    root, tree = work["root"], work["tree"]
    assert cli("keygen", "--type", "symmetric", "-o", root / "k").code == 0
    enc = root / "enc.ptm"
    assert cli("pack", tree, "-o", enc, "--encrypt", "--key-file", root / "k.key").code == 0
    doc = check("verify", cli("verify", enc, "--key-file", root / "k.key", "--json"), True)
    assert doc["encrypted"] is True and doc["decrypted"] is True
    doc = check("verify", cli("verify", enc, "--json"), False)
    assert doc["error"]["kind"] == "key" and "--pubkey" not in doc["error"]["hint"]  # unsigned: no signature to check
    assert doc["check"] == "key"
    assert cli("keygen", "--type", "symmetric", "-o", root / "wrong-sym").code == 0
    doc = check("verify", cli("verify", enc, "--key-file", root / "wrong-sym.key", "--json"), False)
    assert doc["error"]["kind"] == "key" and doc["check"] == "key"  # a wrong key, not a damaged manifest
    doc = check("inspect", cli("inspect", enc, "--json"), True)
    assert doc["sealed"] is True and doc["encryption"]["slots"][0].startswith("keyfile")


def test_residual_commands(work: dict[str, Path]) -> None:
    root, pkg, tree = work["root"], work["pkg"], work["tree"]
    delta = root / "d.ptm"
    doc = check("diff", cli("diff", pkg, tree, "-o", delta, "--json"), True)  # no --residual needed
    assert doc["input"]["base"]["sha256"] and doc["output"]["bytes"] == delta.stat().st_size
    check("diff", cli("diff", pkg, tree, "-o", delta, "--json"), False)
    check("apply", cli("apply", pkg, delta, "-o", root / "n.ptm", "--json"), True)
    doc = check("apply", cli("apply", delta, delta, "-o", root / "n2.ptm", "--json"), False)
    assert doc["error"]["exit_code"] in (2, 7)
    doc = check("apply", cli("apply", pkg, pkg, "-o", root / "n3.ptm", "--json"), False)  # not a delta
    assert "ptmpack diff BASE TARGET -o DELTA" in doc["error"]["hint"] and "--residual" not in doc["error"]["hint"]


def test_ir_commands(work: dict[str, Path]) -> None:
    pkg = work["pkg"]
    doc = check("run", cli("run", pkg, "--tokens", "2,5,7,3", "--json"), True)
    assert doc["kind"] == "embedding"
    check("run", cli("run", pkg, "--json"), False)
    check("eval", cli("eval", pkg, "--json"), False)
    (work["root"] / "few.txt").write_text("a few words\n")
    doc = check("eval", cli("eval", pkg, "--embeddings", work["root"] / "few.txt", "--json"), False)
    assert "tokenizer.json" in doc["error"]["hint"] and "eval" in doc["error"]["hint"]  # no --tokens to point to


def test_distribution_commands(work: dict[str, Path]) -> None:
    pkg, root = work["pkg"], work["root"]
    ref = f"oci:{root / 'layout'}:v1"
    doc = check("push", cli("push", pkg, ref, "--json"), True)
    assert doc["input"]["sha256"]
    doc = check("push", cli("push", root / "missing.ptm", ref, "--json"), False)
    assert doc["error"]["message"].endswith("missing.ptm does not exist")  # not "is not a .ptm package"
    doc = check("pull", cli("pull", ref, "-o", root / "pulled.ptm", "--json"), True)
    assert doc["output"]["sha256"] == check("verify", cli("verify", root / "pulled.ptm", "--json"), True)["input"]["sha256"]
    check("pull", cli("pull", f"oci:{root / 'layout'}:nope", "-o", root / "p2.ptm", "--json"), False)
    check("ls", cli("ls", ref, "--json"), True)
    check("ls", cli("ls", f"oci:{root / 'absent'}", "--json"), False)


def test_cache_and_account_commands(work: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """cache ls|prune, login and logout, without a registry: success and failure documents."""
    root = work["root"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache-docs"))
    monkeypatch.setenv("DOCKER_CONFIG", str(root / "docker"))
    assert check("cache", cli("cache", "ls", "--json"), True)["blobs"] == 0
    check("cache", cli("cache", "prune", "--max-size", "1K", "--all", "--json"), False)
    check("cache", cli("cache", "prune", "--max-size", "lots", "--json"), False)
    assert check("cache", cli("cache", "prune", "--all", "--json"), True)["blobs_removed"] == 0
    check("logout", cli("logout", "registry.example.com", "--json"), True)
    check("login", cli("login", "127.0.0.1:9", "-u", "me", "--plain-http", "--json"), False)  # no password on stdin


def test_signed_distribution_fields(work: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """push names the signature referrer it attached, ls lists the package's signers (as verify names the signer),
    pull --pubkey accepts the signer's key and refuses another's with a document; --base and --timeout are taken."""
    root, tree, pkg = work["root"], work["tree"], work["pkg"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache-signed"))
    for name in ("release", "other"):
        assert cli("keygen", "--type", "ed25519", "-o", root / name).code == 0
    signed = root / "signed.ptm"
    assert cli("pack", tree, "-o", signed, "--sign-key", root / "release.key").code == 0
    ref = f"oci:{root / 'signed-layout'}:v1"
    unsigned = check("push", cli("push", pkg, f"oci:{root / 'signed-layout'}:plain", "--json"), True)
    assert unsigned["signature_referrer"] is None
    pushed = check("push", cli("push", signed, ref, "--split-size", "64K", "--json"), True)
    assert pushed["signature_referrer"].startswith("sha256:")
    listed = check("ls", cli("ls", ref, "--json"), True)
    signer = check("verify", cli("verify", signed, "--json"), True)["signer"]
    assert listed["package"]["signers"] == [signer] and "SIGNED" in listed["package"]["flags"]
    plain = check("ls", cli("ls", f"oci:{root / 'signed-layout'}:plain", "--json"), True)
    assert plain["package"]["signers"] == []
    doc = check("pull", cli("pull", ref, "-o", root / "s1.ptm", "--pubkey", root / "release.pub", "--base", pkg,
                            "--timeout", "60", "--json"), True)
    assert doc["output"]["sha256"] == pushed["input"]["sha256"] and "signature" in doc["checks"]
    doc = check("pull", cli("pull", ref, "-o", root / "s2.ptm", "--pubkey", root / "other.pub", "--json"), False)
    assert doc["error"]["kind"] == "integrity" and not (root / "s2.ptm").exists()
    doc = check("pull", cli("pull", ref, "-o", root / "s3.ptm", "--base", root / "typo.ptm", "--json"), False)
    assert doc["error"]["kind"] == "usage" and "typo.ptm" in doc["error"]["message"] and not (root / "s3.ptm").exists()


def test_compress_and_eval_json(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from tests._support.tiny_models import tiny_tree

    tree = tiny_tree(tmp_path, "llama")
    doc = check("compress", cli("compress", tree, "-o", tmp_path / "q.ptm", "--quant", "rtn", "--group-size", "32",
                                "--json"), True)
    assert doc["steps"][0]["symmetric"] is True and "compressed-tensors" in doc["loads_with"]
    assert doc["encrypted"] is False
    check("compress", cli("compress", tree, "-o", tmp_path / "q.ptm", "--quant", "rtn", "--json"), False)  # exists
    # A quantized package counts stored elements (packed words, scales), not parameters, and names its scheme.
    doc = check("inspect", cli("inspect", tmp_path / "q.ptm", "--json"), True)
    assert "parameters" not in doc["totals"] and doc["totals"]["stored_elements"] > 0
    assert {k: doc["quantization"][k] for k in ("method", "bits", "group_size", "symmetric")} == {
        "method": "rtn", "bits": 4, "group_size": 32, "symmetric": True}
    from tests._support.tiny_models import sample_text

    (tmp_path / "text.txt").write_text(sample_text(300, seed=5))
    doc = check("eval", cli("eval", tmp_path / "q.ptm", "--perplexity", tmp_path / "text.txt", "--json"), True)
    assert doc["perplexity"] > 1


def _readme_ci_recipe() -> str:
    """The shell lines of README's "In a CI pipeline" step, exactly as documented."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("### In a CI pipeline", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    lines = block.split("run: |", 1)[1].splitlines()
    return "\n".join(line.strip() for line in lines if line.strip())


def test_readme_ci_recipe_reads_a_tampered_package(work: dict[str, Path], tmp_path: Path) -> None:
    """README's CI step, run as written (bash -e, its paths swapped for test files): it passes a good signed
    package and fails a tampered one after printing the failed check, never on a jq parse error."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    import sys

    recipe = _readme_ci_recipe()
    assert "jq -e '.ok" in recipe and "--json" in recipe
    assert cli("keygen", "--type", "ed25519", "-o", tmp_path / "release").code == 0
    signed = tmp_path / "model.ptm"
    assert cli("pack", work["tree"], "-o", signed, "--sign-key", tmp_path / "release.key").code == 0
    bad = tmp_path / "bad.ptm"
    blob = bytearray(signed.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    bad.write_bytes(bytes(blob))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ptmpack").write_text(f"#!/bin/sh\nexec {sys.executable} -m ptmpack.cli \"$@\"\n")
    (bindir / "ptmpack").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}

    def step(package: Path) -> subprocess.CompletedProcess[str]:
        script = recipe.replace("dist/model.ptm", str(package)).replace("keys/release.pub",
                                                                       str(tmp_path / "release.pub"))
        return subprocess.run(["bash", "-e", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)

    good = step(signed)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("verified: signer")
    tampered = step(bad)
    assert tampered.returncode != 0
    assert "parse error" not in tampered.stderr
    assert tampered.stdout.startswith("integrity ("), tampered.stdout
    cut = tmp_path / "cut.ptm"
    cut.write_bytes(signed.read_bytes()[: signed.stat().st_size // 2])
    assert step(cut).stdout.startswith("integrity (manifest): no ptmpack trailer")  # the layout failed, not the signature
    assert json.loads((tmp_path / "verify.json").read_text())["ok"] is False
