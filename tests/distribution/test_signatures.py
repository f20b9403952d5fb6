"""Signatures as OCI referrers: attached by push, listed by ls, required by ``pull --pubkey`` (exit 3 before any
output appears when a package is unsigned, signed by another key, or its referrer points elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ptmpack import api
from ptmpack.config import EncryptionSpec
from ptmpack.crypto.signing import key_fingerprint
from ptmpack.distribution import ClientOptions, PushOptions, ls_ref, push
from ptmpack.distribution.oci import canonical_json
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.referrers import SIGNATURE_ARTIFACT_TYPE, fallback_tag, find_signers
from ptmpack.distribution.registry import RegistryStore
from ptmpack.format import spec
from tests._support.clirun import assert_clean_error, cli
from tests._support.registry import Registry
from tests.distribution.packages import PASSPHRASE, write_model_tree

PLAIN = ClientOptions(plain_http=True)


def _pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("keys")
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    tree = write_model_tree(folder / "tree", rows=500)
    pkgs = {"unsigned": folder / "unsigned.ptm", "signed": folder / "signed.ptm", "sealed": folder / "sealed.ptm"}
    api.pack(tree, pkgs["unsigned"], api.PackConfig())
    api.pack(tree, pkgs["signed"], api.PackConfig(sign_key=signer))
    api.pack(tree, pkgs["sealed"], api.PackConfig(compression=spec.Compression.ZSTD, sign_key=signer,
                                                  encryption=EncryptionSpec(passphrases=(PASSPHRASE,), scrypt_log2_n=10)))
    return {"signer": signer, "pub": _pem(signer, folder / "signer.pem"), "other": _pem(other, folder / "other.pem"),
            **pkgs}


def _no_output(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith((".ptmpack-tmp-", "out"))] == []


def test_push_attaches_the_signature_under_the_fallback_tag(registry: Registry, keys: dict, tmp_path: Path) -> None:
    ref = f"{registry.host}/sig/model:v1"
    pushed = push(keys["signed"], ref, PushOptions(client=PLAIN))
    assert pushed.signature_referrer is not None
    tag = fallback_tag(pushed.digest)
    listing = ls_ref(f"{registry.host}/sig/model", PLAIN, all_tags=True)
    assert tag in listing.tags  # docker-registry 2.8 has no referrers API: the tag schema is what it gets
    plain = ls_ref(f"{registry.host}/sig/model", PLAIN)  # not a version: hidden unless asked for
    assert tag not in plain.tags and "v1" in plain.tags and plain.hidden == 1
    fp = key_fingerprint(keys["signer"].public_key()).hex()
    assert ls_ref(ref, PLAIN).package.signers == (fp,)  # type: ignore[union-attr]
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        index = json.loads(store.get_manifest(tag)[0])  # type: ignore[index]
        [entry] = index["manifests"]
        assert entry["artifactType"] == SIGNATURE_ARTIFACT_TYPE and entry["digest"] == pushed.signature_referrer
        referrer = json.loads(store.get_manifest(entry["digest"])[0])  # type: ignore[index]
        assert referrer["subject"]["digest"] == pushed.digest
    finally:
        store.close()
    again = push(keys["signed"], ref, PushOptions(client=PLAIN))  # pushing again lists the referrer once
    assert again.signature_referrer == pushed.signature_referrer
    assert len(find_signers(RegistryStore(parse_reference(ref), PLAIN), pushed.digest)) == 1
    human = cli("ls", ref, "--plain-http")
    assert human.code == 0 and f"yes, key {fp}" in human.out + human.err
    unsigned = push(keys["unsigned"], f"{registry.host}/sig/model:plain", PushOptions(client=PLAIN))
    assert unsigned.signature_referrer is None
    assert ls_ref(f"{registry.host}/sig/model:plain", PLAIN).package.signers == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["signed", "sealed"])
def test_pull_pubkey_accepts_the_signer(registry: Registry, keys: dict, tmp_path: Path, kind: str) -> None:
    ref = f"{registry.host}/sig/ok-{kind}:v1"
    push(keys[kind], ref, PushOptions(client=PLAIN))
    out = tmp_path / "out.ptm"
    run = cli("pull", ref, "-o", out, "--plain-http", "--pubkey", keys["pub"], "--json")
    assert run.code == 0, run.err
    assert "signature" in run.json()["checks"]  # type: ignore[index]
    assert out.read_bytes() == keys[kind].read_bytes()


@pytest.mark.parametrize(("kind", "key", "words"), [
    ("unsigned", "pub", "is not signed"),
    ("signed", "other", "not by key"),
])
def test_pull_pubkey_refuses(registry: Registry, keys: dict, tmp_path: Path, kind: str, key: str, words: str) -> None:
    ref = f"{registry.host}/sig/refused-{kind}-{key}:v1"
    push(keys[kind], ref, PushOptions(client=PLAIN))
    run = cli("pull", ref, "-o", tmp_path / "out.ptm", "--plain-http", "--pubkey", keys[key])
    assert_clean_error(run, 3)
    assert words in run.err
    _no_output(tmp_path)


def test_referrer_of_another_subject_is_refused(registry: Registry, keys: dict, tmp_path: Path) -> None:
    """A registry lists the signature of package A as a referrer of package B: exit 3, nothing written."""
    repo = f"{registry.host}/sig/spliced"
    signed = push(keys["signed"], f"{repo}:a", PushOptions(client=PLAIN))
    victim = push(keys["unsigned"], f"{repo}:b", PushOptions(client=PLAIN))
    store = RegistryStore(parse_reference(f"{repo}:a"), PLAIN)
    try:
        index = json.loads(store.get_manifest(fallback_tag(signed.digest))[0])  # type: ignore[index]
        store.put_index(canonical_json(index), fallback_tag(victim.digest))
    finally:
        store.close()
    run = cli("pull", f"{repo}:b", "-o", tmp_path / "out.ptm", "--plain-http", "--pubkey", keys["pub"])
    assert_clean_error(run, 3)
    assert "points at" in run.err
    _no_output(tmp_path)


def test_layout_signatures(keys: dict, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    pushed = push(keys["signed"], f"oci:{layout}:v1")
    assert fallback_tag(pushed.digest) in ls_ref(f"oci:{layout}", all_tags=True).tags
    assert ls_ref(f"oci:{layout}").tags == ("v1",)
    run = cli("pull", f"oci:{layout}:v1", "-o", tmp_path / "out.ptm", "--pubkey", keys["pub"])
    assert run.code == 0, run.err
    assert (tmp_path / "out.ptm").read_bytes() == keys["signed"].read_bytes()
    wrong = cli("pull", f"oci:{layout}:v1", "-o", tmp_path / "out2.ptm", "--pubkey", keys["other"])
    assert_clean_error(wrong, 3)
    assert not (tmp_path / "out2.ptm").exists()
