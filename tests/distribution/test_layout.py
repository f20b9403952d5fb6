"""push / pull / ls through an OCI image layout directory (oci:DIR), the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptmpack.distribution import PullOptions, ls_ref, pull, push
from ptmpack.distribution.oci import ARTIFACT_TYPE, CHUNK_MEDIA_TYPE, MODEL_ARTIFACT_TYPE, RECIPE_MEDIA_TYPE
from ptmpack.distribution.referrers import fallback_tag
from ptmpack.errors import IntegrityError, UsageError
from tests.distribution.packages import KINDS, pack_kind, write_model_tree


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("packages")
    tree = write_model_tree(folder / "tree", rows=9000)
    return {kind: pack_kind(tree, folder / f"{kind}.ptm", kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_layout_round_trip(packages: dict[str, Path], tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    pushed = push(packages[kind], f"oci:{layout}:{kind}")
    index = json.loads((layout / "index.json").read_text())
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == kind]
    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_text())
    if kind in ("raw", "signed"):  # stored raw, in clear: a ModelPack artifact, one layer per file, recipe last
        assert manifest["artifactType"] == MODEL_ARTIFACT_TYPE and manifest["layers"][-1]["mediaType"] == RECIPE_MEDIA_TYPE
        assert len(manifest["layers"]) == 4 + 1  # four files and the recipe
    else:  # compressed or encrypted: ptmpack-native chunk blobs
        assert manifest["artifactType"] == ARTIFACT_TYPE and manifest["layers"][0]["mediaType"] == RECIPE_MEDIA_TYPE
        assert all(d["mediaType"] == CHUNK_MEDIA_TYPE for d in manifest["layers"][1:])
        assert len(manifest["layers"]) >= 3  # 9 MB of weights: at least two chunk blobs besides the recipe
    out = tmp_path / "out.ptm"
    pulled = pull(f"oci:{layout}:{kind}", out)
    assert out.read_bytes() == packages[kind].read_bytes() and pulled.digest == pushed.digest
    signature = (fallback_tag(pushed.digest),) if kind == "signed" else ()  # the referrers tag of its signature
    assert ls_ref(f"oci:{layout}", all_tags=True).tags == tuple(sorted((kind, *signature)))
    listed = ls_ref(f"oci:{layout}")  # the referrers tag is not a version: listed only when asked for
    assert listed.tags == (kind,) and listed.hidden == len(signature)


def test_layout_blob_corruption_is_refused(packages: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    push(packages["zstd"], f"oci:{layout}:v1")
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    blob = layout / "blobs" / "sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        pull(f"oci:{layout}:v1", tmp_path / "out.ptm")
    assert err.value.exit_code == 3 and not (tmp_path / "out.ptm").exists()


def test_layout_errors(packages: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError):  # no layout there
        pull(f"oci:{tmp_path / 'nothing'}:v1", tmp_path / "a.ptm")
    layout = tmp_path / "layout"
    push(packages["raw"], f"oci:{layout}:v1")
    with pytest.raises(UsageError) as err:  # unknown tag
        pull(f"oci:{layout}:v2", tmp_path / "a.ptm")
    assert err.value.exit_code == 2
    pull(f"oci:{layout}:v1", tmp_path / "a.ptm")
    with pytest.raises(UsageError):  # existing output without force
        pull(f"oci:{layout}:v1", tmp_path / "a.ptm")
    pull(f"oci:{layout}:v1", tmp_path / "a.ptm", PullOptions(force=True))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(UsageError):  # a non-empty folder is not made into a layout
        push(packages["raw"], f"oci:{tmp_path / 'junk'}:v1")
    with pytest.raises(UsageError):  # not a package
        push(tmp_path / "junk" / "file.txt", f"oci:{layout}:v1")


def test_same_version_twice_writes_nothing(packages: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    push(packages["signed"], f"oci:{layout}:v1")
    again = push(packages["signed"], f"oci:{layout}:v1")
    assert (again.bytes_uploaded, again.blobs_uploaded, again.manifest_uploaded) == (0, 0, False)


def test_push_and_pull_by_digest(packages: dict[str, Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = push(packages["raw"], f"oci:{layout}:v1").digest
    assert push(packages["raw"], f"oci:{layout}@{digest}").digest == digest  # the same package: accepted
    with pytest.raises(UsageError):  # a digest that is not this package's is refused before anything is written
        push(packages["zstd"], f"oci:{layout}@{digest}")
    assert ls_ref(f"oci:{layout}").tags == ("v1",)  # a push by digest adds no tag
    pull(f"oci:{layout}@{digest}", tmp_path / "out.ptm")
    assert (tmp_path / "out.ptm").read_bytes() == packages["raw"].read_bytes()
