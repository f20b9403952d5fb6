"""Package signatures as OCI referrers, so registries, admission policies and ``pull --pubkey`` can see them.

A signed package's signature block (Ed25519 over the package id, the container's
manifest digest and every byte before the block; docs/CRYPTO.md) is attached to
the package manifest as a referrer: an OCI image manifest with ``artifactType``
``application/vnd.ptmpack.signature.v1``, the empty config, one layer holding the
block, the signer's key fingerprint as an annotation, and ``subject`` = the
package manifest. Registries with the referrers API (OCI distribution 1.1) index
it by its subject; for the others (Debian's docker-registry 2.8 among them) and
for layout directories, push maintains the spec's fallback: an image index tagged
``sha256-<hex of the subject digest>`` that lists the subject's referrers.

Finding a signer before anything is downloaded lets ``pull --pubkey`` refuse an
unsigned package, or one signed by another key, early; the assembled file's own
signature is verified again before the output appears (:mod:`ptmpack.distribution.fetch`).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptmpack.crypto.signing import SignatureBlock
from ptmpack.distribution.oci import (
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    canonical_json,
    load_document,
    sha256_digest,
)
from ptmpack.distribution.storetypes import Store, fetch_blob
from ptmpack.errors import IntegrityError
from ptmpack.format.reader import PackageReader
from ptmpack.format.records import Trailer

SIGNATURE_ARTIFACT_TYPE = "application/vnd.ptmpack.signature.v1"
SIGNATURE_MEDIA_TYPE = "application/vnd.ptmpack.signature.block.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
ANN_FINGERPRINT = "org.ptmpack.signature.fingerprint"
ANN_ALGORITHM = "org.ptmpack.signature.algorithm"
MAX_BLOCK = 64 * 1024
MAX_REFERRERS = 64
"""Signature referrers read per package (a subject with more is refused as hostile)."""


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema: ``sha256-<hex>`` (OCI distribution spec 1.1, "Referrers Tag Schema")."""
    algo, _, hexd = subject_digest.partition(":")
    return f"{algo}-{hexd}"


def is_fallback_tag(tag: str) -> bool:
    """Whether ``tag`` has the form :func:`fallback_tag` gives (an index of referrers, not a version)."""
    return re.fullmatch(r"sha256-[0-9a-f]{64}", tag) is not None


def signature_block(reader: PackageReader) -> bytes | None:
    """The package's signature block as stored, or None when unsigned (reads only the block)."""
    start = reader.trailer.signature_offset
    if not start:
        return None
    return os.pread(reader.fileno(), reader.size - Trailer.SIZE - start, start)


@dataclass(frozen=True)
class Signer:
    """A signature referrer of a package: its manifest digest and the key fingerprint of the block it holds."""

    referrer: str
    fingerprint: str
    block: bytes


def attach_signature(store: Store, subject: Descriptor, block: bytes) -> str:
    """Attach ``block`` to the package manifest ``subject`` as a referrer; returns the referrer's digest.

    Raises:
        IntegrityError: the block is malformed, or the fallback tag holds something that is not an index.
    """
    parsed = SignatureBlock.from_bytes(block)
    block_digest = sha256_digest(block)
    empty_digest = sha256_digest(EMPTY)
    for digest, data in ((empty_digest, EMPTY), (block_digest, block)):
        if not store.has_blob(digest, len(data)):
            store.put_blob(digest, len(data), lambda pos, n, d=data: d[pos: pos + n], lambda n: None)
    ann = {ANN_FINGERPRINT: parsed.key_fingerprint.hex(), ANN_ALGORITHM: "ed25519"}
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": SIGNATURE_ARTIFACT_TYPE,
           "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest, "size": len(EMPTY)},
           "layers": [{"mediaType": SIGNATURE_MEDIA_TYPE, "digest": block_digest, "size": len(block)}],
           "subject": subject.to_json(), "annotations": ann}
    data = canonical_json(doc)
    digest, _ = store.put_manifest(data, None, SIGNATURE_ARTIFACT_TYPE)
    if store.referrers(subject.digest) is not None:  # the registry indexes referrers by their subject itself
        return digest
    tag = fallback_tag(subject.digest)
    index = _fallback_index(store, tag)
    if not any(m.get("digest") == digest for m in index["manifests"]):
        index["manifests"].append({"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(data),
                                   "artifactType": SIGNATURE_ARTIFACT_TYPE, "annotations": ann})
        store.put_index(canonical_json(index), tag)
    return digest


def _fallback_index(store: Store, tag: str) -> dict[str, Any]:
    got = store.get_manifest(tag)
    if got is None:
        return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    doc = load_document(got[0], f"referrers tag {tag}")
    if doc.get("mediaType") != INDEX_MEDIA_TYPE or not isinstance(doc.get("manifests"), list):
        raise IntegrityError(f"referrers tag {tag} does not hold an image index")
    doc["manifests"] = [m for m in doc["manifests"] if isinstance(m, dict)]
    return doc


def find_signers(store: Store, subject_digest: str) -> list[Signer]:
    """The signature referrers of the package manifest ``subject_digest``, each checked and parsed.

    Raises:
        IntegrityError: a referrer names another subject, its block does not match its digest or is
            malformed, or there are more than ``MAX_REFERRERS``.
    """
    listed = store.referrers(subject_digest)
    if listed is None:
        listed = _fallback_index(store, fallback_tag(subject_digest))["manifests"]
    found = [m for m in listed if isinstance(m, dict) and m.get("artifactType") == SIGNATURE_ARTIFACT_TYPE]
    if len(found) > MAX_REFERRERS:
        raise IntegrityError(f"{len(found)} signature referrers for {subject_digest}: more than any package has")
    out = []
    for entry in found:
        desc = Descriptor.from_json(entry, "referrer")
        got = store.get_manifest(desc.digest)
        if got is None:
            raise IntegrityError(f"the referrers of {subject_digest} list {desc.digest}, which the store lacks")
        doc = load_document(got[0], f"referrer {desc.digest}")
        subject = Descriptor.from_json(doc.get("subject"), f"referrer {desc.digest} subject")
        if subject.digest != subject_digest:
            raise IntegrityError(f"signature referrer {desc.digest} points at {subject.digest}, not at "
                                 f"{subject_digest}", hint="the registry's referrers list was tampered with")
        layers = doc.get("layers")
        if not isinstance(layers, list) or len(layers) != 1:
            raise IntegrityError(f"signature referrer {desc.digest} must have exactly one layer")
        layer = Descriptor.from_json(layers[0], f"referrer {desc.digest} layer")
        if layer.media_type != SIGNATURE_MEDIA_TYPE or layer.size > MAX_BLOCK:
            raise IntegrityError(f"signature referrer {desc.digest} holds no signature block")
        block = _read_blob(store, layer.digest, layer.size)
        out.append(Signer(desc.digest, SignatureBlock.from_bytes(block).key_fingerprint.hex(), block))
    return out


def _read_blob(store: Store, digest: str, size: int) -> bytes:
    data = store.fetch_range(digest, 0, size) if size else b""
    if data is None:  # no ranges: fetch whole into a temporary file
        with tempfile.TemporaryDirectory(prefix=".ptmpack-tmp-") as tmp:
            part = os.path.join(tmp, "blob")
            fetch_blob(store, digest, size, Path(part), lambda n: None)
            with open(part, "rb") as f:
                data = f.read()
    if sha256_digest(data) != digest:
        raise IntegrityError(f"signature blob {digest} does not match its digest")
    return data


def require_signer(store: Store, subject_digest: str, public: Any) -> Signer:
    """The signature referrer of ``subject_digest`` made by the Ed25519 key ``public``.

    Only the fingerprint is compared here (the signature covers bytes not yet
    fetched); the assembled package's signature is verified before it is renamed.

    Raises:
        IntegrityError: the package has no signature referrer, or none by that key (exit 3).
    """
    from ptmpack.crypto.signing import key_fingerprint

    want = key_fingerprint(public).hex()
    signers = find_signers(store, subject_digest)
    for s in signers:
        if s.fingerprint == want:
            return s
    if not signers:
        raise IntegrityError(f"{subject_digest} is not signed, but a signature by key {want} is required",
                             hint="nothing was written; ask the publisher to push a signed package (pack --sign-key)")
    raise IntegrityError(f"{subject_digest} is signed by {', '.join(s.fingerprint for s in signers)}, not by key {want}",
                         hint="nothing was written; check that --pubkey is the publisher's key")
