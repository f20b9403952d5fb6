"""Real packages for the distribution tests: safetensors weights written by the safetensors library,
packed by ptmpack raw, zstd-compressed, encrypted (AES-256-GCM, passphrase) and signed (Ed25519)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save_file

from ptmpack import api
from ptmpack.config import EncryptionSpec
from ptmpack.format import spec
from ptmpack.metadata import documents as meta

PASSPHRASE = b"correct horse battery staple"
KINDS = ("raw", "zstd", "encrypted", "signed")


def write_model_tree(root: Path, *, seed: int = 0, rows: int = 3000, version: str = "1.0.0",
                     bump: float = 0.0) -> Path:
    """A package tree with real safetensors weights (about ``rows`` KiB of float32).

    ``bump`` shifts only the small ``head.weight`` tensor (a "fine-tune" touching one
    tensor); ``version`` changes only the metadata.
    """
    rng = np.random.default_rng(seed)
    tensors = {
        "encoder.weight": (rng.standard_normal((rows, 256)) * 0.02).astype(np.float32),
        "head.weight": (rng.standard_normal((64, 256)) * 0.02 + bump).astype(np.float32),
        "head.bias": np.zeros(256, np.float16),
    }
    (root / "Model").mkdir(parents=True)
    (root / "Meta-info").mkdir()
    save_file(tensors, str(root / "Model" / "model.safetensors"))
    (root / "Model" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 256}))
    management = meta.management_template("dist test model")
    management.update({"version": version, "license": "Apache-2.0", "provider": "ptmpack tests"})
    (root / "Meta-info" / "managementinfo.json").write_text(json.dumps(management))
    (root / "Meta-info" / "technicalinfo.json").write_text(json.dumps(meta.technical_template()))
    return root


def pack_kind(tree: Path, out: Path, kind: str) -> Path:
    """Pack ``tree`` as one of KINDS."""
    config = {
        "raw": api.PackConfig(),
        "zstd": api.PackConfig(compression=spec.Compression.ZSTD, chunk_size=1024 * 1024),
        "encrypted": api.PackConfig(compression=spec.Compression.ZSTD,
                                    encryption=EncryptionSpec(passphrases=(PASSPHRASE,), scrypt_log2_n=10)),
        "signed": api.PackConfig(sign_key=Ed25519PrivateKey.generate()),
    }[kind]
    api.pack(tree, out, config)
    return out
