"""ModelPack artifacts as the ecosystem reads them: the spec's schemas, a spec-only client, skopeo, split files,
and manifests, recipes, indexes and registries that lie (exit 3, nothing written)."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry as SchemaRegistry
from referencing import Resource
from referencing.jsonschema import DRAFT4

from ptmpack import api
from ptmpack.distribution import ClientOptions, PullOptions, PushOptions, pull, push
from ptmpack.distribution.chunks import LocalChunks, Region, fetch_by_ranges
from ptmpack.distribution.modelpack import (
    ANN_FILEPATH,
    ANN_PART,
    CODE,
    CONFIG_MEDIA_TYPE,
    DOC,
    WEIGHT,
    WEIGHT_CONFIG,
)
from ptmpack.distribution.oci import MODEL_ARTIFACT_TYPE, RECIPE_MEDIA_TYPE, canonical_json, sha256_digest
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.registry import RegistryStore
from ptmpack.distribution.storetypes import BlobTarget
from ptmpack.errors import IntegrityError
from tests._support.clirun import assert_clean_error, cli
from tests._support.registry import Registry
from tests.distribution.packages import pack_kind, write_model_tree

SCHEMAS = Path(__file__).parent / "schemas"
PLAIN = ClientOptions(plain_http=True)


def _oci_schema(name: str) -> jsonschema.Draft4Validator:
    def retrieve(uri: str) -> Resource:  # the OCI schemas reference each other by file name
        return Resource.from_contents(json.loads((SCHEMAS / "oci" / uri.rsplit("/", 1)[-1]).read_text()),
                                      default_specification=DRAFT4)

    schema = json.loads((SCHEMAS / "oci" / name).read_text())
    return jsonschema.Draft4Validator(schema, registry=SchemaRegistry(retrieve=retrieve))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mp")
    tree = write_model_tree(folder / "tree", rows=3000)
    (tree / "Program" / "Scripts").mkdir(parents=True)
    (tree / "Program" / "Scripts" / "infer.py").write_text("print('hello')\n")
    (tree / "Model" / "empty.txt").write_bytes(b"")
    return pack_kind(tree, folder / "p.ptm", "raw")


def _layout_manifest(layout: Path, tag: str) -> tuple[dict[str, Any], str]:
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    return json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes()), entry["digest"]


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest[7:]).read_bytes()


def test_manifest_and_config_follow_the_spec(package: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    push(package, f"oci:{layout}:v1")
    manifest, _ = _layout_manifest(layout, "v1")
    _oci_schema("image-manifest-schema.json").validate(manifest)
    assert manifest["artifactType"] == MODEL_ARTIFACT_TYPE and manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    schema = json.loads((SCHEMAS / "modelpack" / "config-schema.json").read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(config)
    assert config["descriptor"]["name"] == "dist test model" and config["descriptor"]["licenses"] == ["Apache-2.0"]
    assert config["config"]["format"] == "safetensors" and config["config"]["precision"] == "float32"
    assert config["modelfs"]["diffIds"] == [d["digest"] for d in manifest["layers"]]
    with api.open_package(package) as pkg:
        files = {f.path: f for f in pkg.files}
    *layers, recipe = manifest["layers"]
    assert recipe["mediaType"] == RECIPE_MEDIA_TYPE and len(layers) == len(files)  # layers = files + 1
    roles = {"Model/model.safetensors": WEIGHT, "Model/config.json": WEIGHT_CONFIG, "Model/empty.txt": WEIGHT_CONFIG,
             "Meta-info/managementinfo.json": DOC, "Meta-info/technicalinfo.json": DOC,
             "Program/Scripts/infer.py": CODE}
    for layer in layers:
        path = layer["annotations"][ANN_FILEPATH]
        assert layer["annotations"]["org.opencontainers.image.title"] == path
        assert layer["mediaType"] == roles[path]
        assert layer["digest"] == "sha256:" + files[path].sha256.hex()  # the file's own digest: raw bytes
    ann = manifest["annotations"]
    assert ann["org.ptmpack.package.size"] == str(package.stat().st_size)
    assert ann["org.opencontainers.image.title"] == "dist test model"


def test_spec_only_client_restores_the_tree(package: Path, tmp_path: Path) -> None:
    """What a ModelPack client does (write each layer to its filepath) gives exactly what unpack gives."""
    layout = tmp_path / "layout"
    push(package, f"oci:{layout}:v1")
    manifest, _ = _layout_manifest(layout, "v1")
    restored = tmp_path / "restored"
    for layer in manifest["layers"]:
        path = layer.get("annotations", {}).get(ANN_FILEPATH)
        if path is None:  # the ptmpack layer: a generic client has no use for it
            continue
        data = _blob(layout, layer["digest"])
        assert sha256_digest(data) == layer["digest"]
        (restored / path).parent.mkdir(parents=True, exist_ok=True)
        (restored / path).write_bytes(data)
    api.unpack(package, tmp_path / "unpacked")
    want = {p.relative_to(tmp_path / "unpacked"): p.read_bytes() for p in (tmp_path / "unpacked").rglob("*") if p.is_file()}
    got = {p.relative_to(restored): p.read_bytes() for p in restored.rglob("*") if p.is_file()}
    assert got == want


def test_split_files_travel_as_ordered_parts(package: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    push(package, f"oci:{layout}:v1", PushOptions(split_size=1024 * 1024))
    manifest, _ = _layout_manifest(layout, "v1")
    parts = [d for d in manifest["layers"] if d.get("annotations", {}).get(ANN_FILEPATH) == "Model/model.safetensors"]
    assert len(parts) == 3 and [p["annotations"][ANN_PART] for p in parts] == ["1/3", "2/3", "3/3"]
    weights = b"".join(_blob(layout, p["digest"]) for p in parts)
    with api.open_package(package) as pkg:
        assert weights == pkg.read_file("Model/model.safetensors")
    pull(f"oci:{layout}:v1", tmp_path / "out.ptm")
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()


def _rewrite(layout: Path, tag: str, edit: Any) -> None:
    """Edit a layout's manifest (and re-point the tag at it): what a registry that lies would serve."""
    manifest, old = _layout_manifest(layout, tag)
    edit(manifest)
    data = canonical_json(manifest)
    (layout / "blobs" / "sha256" / sha256_digest(data)[7:]).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m["digest"] == old:
            m["digest"], m["size"] = sha256_digest(data), len(data)
    (layout / "index.json").write_text(json.dumps(index))


def _swap_paths(m: dict[str, Any]) -> None:
    a, b = m["layers"][0]["annotations"], m["layers"][1]["annotations"]
    a[ANN_FILEPATH], b[ANN_FILEPATH] = b[ANN_FILEPATH], a[ANN_FILEPATH]


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m["layers"][0]["annotations"].update({ANN_FILEPATH: "../escape.txt"}), id="dotdot-path"),
    pytest.param(lambda m: m["layers"][0]["annotations"].update({ANN_FILEPATH: "/etc/passwd"}), id="absolute-path"),
    pytest.param(_swap_paths, id="paths-swapped"),
    pytest.param(lambda m: m["layers"].insert(0, m["layers"].pop(1)), id="layers-reordered"),
    pytest.param(lambda m: m["annotations"].update({"org.ptmpack.package.size": "12"}), id="size-lies"),
    pytest.param(lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 1), id="layer-size-lies"),
    pytest.param(lambda m: m["annotations"].update({"org.ptmpack.package.flags": "ENCRYPTED"}), id="claims-encrypted"),
    pytest.param("diffids", id="config-diffids-lie"),
])
def test_lying_manifest_exits_3_and_writes_nothing(package: Path, tmp_path: Path, edit: Any) -> None:
    layout = tmp_path / "layout"
    push(package, f"oci:{layout}:v1")
    if edit == "diffids":  # a config that tells ModelPack clients about other layers
        def edit(m: dict[str, Any]) -> None:
            config = json.loads(_blob(layout, m["config"]["digest"]))
            config["modelfs"]["diffIds"].reverse()
            data = canonical_json(config)
            (layout / "blobs" / "sha256" / sha256_digest(data)[7:]).write_bytes(data)
            m["config"].update(digest=sha256_digest(data), size=len(data))
    _rewrite(layout, "v1", edit)
    run = cli("pull", f"oci:{layout}:v1", "-o", tmp_path / "out.ptm")
    assert_clean_error(run, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("layout", "xdg-cache")] == []


class _Lying:
    """A store that serves a blob's ranges wrongly: another range, or more bytes than asked."""

    def __init__(self, data: bytes, how: str) -> None:
        self.data, self.how = data, how

    def fetch_range(self, digest: str, start: int, length: int) -> bytes | None:
        if self.how == "shifted":
            return self.data[start + 1: start + 1 + length]
        if self.how == "longer":
            return self.data[start: start + length + 7]
        return self.data[start: start + length]


@pytest.mark.parametrize("how", ["shifted", "longer"])
def test_wrong_ranges_are_refused(tmp_path: Path, how: str) -> None:
    chunk = 64 * 1024
    old = bytes(range(256)) * 1024  # 256 KiB: four chunks
    new = old[:chunk] + b"\xff" * chunk + old[2 * chunk:]
    (tmp_path / "old").write_bytes(old)
    table = [hashlib.sha256(new[i: i + chunk]).digest() for i in range(0, len(new), chunk)]
    local = LocalChunks(chunk, [Region(tmp_path / "old", 0, len(old))])
    with open(tmp_path / "staged", "w+b") as f:  # the blob's place in a package being assembled, at offset 4096
        target = BlobTarget(f.fileno(), 4096)
        with pytest.raises(IntegrityError) as err:
            fetch_by_ranges(_Lying(new, how), sha256_digest(new), len(new), table, chunk, local, target,  # type: ignore[arg-type]
                            lambda n: None)
        assert err.value.exit_code == 3 and target.kept == 0  # never recorded: a resumed pull starts it over
        # an honest store: only the changed chunk moves, and the rebuilt blob is the new one, recorded complete
        moved = fetch_by_ranges(_Lying(new, "honest"), sha256_digest(new), len(new), table, chunk, local, target,  # type: ignore[arg-type]
                                lambda n: None)
    assert moved == chunk and target.kept == len(new) and (tmp_path / "staged").read_bytes()[4096:] == new


class _RangeServer:
    """An HTTP server answering every blob GET with a 206 whose Content-Range or body is not what was asked."""

    def __init__(self, mode: str) -> None:
        mode_ = mode

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                body = b"x" * (end - start + 1 + (5 if mode_ == "more" else 0))
                first = start + (1 if mode_ == "other-range" else 0)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{first + end - start}/99999")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.parametrize("mode", ["other-range", "more"])
def test_registry_range_answers_are_checked(mode: str) -> None:
    server = _RangeServer(mode)
    try:
        store = RegistryStore(parse_reference(f"{server.host}/r/x:v1"), PLAIN)
        with pytest.raises(IntegrityError) as err:
            store.fetch_range("sha256:" + "0" * 64, 100, 50)
        assert err.value.exit_code == 3
        store.close()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def skopeo() -> str:
    found = shutil.which("skopeo")
    if found is None:
        pytest.skip("skopeo (Debian package skopeo) is not installed")
    return found


def test_skopeo_copies_registry_to_layout_to_registry(registry: Registry, package: Path, tmp_path: Path,
                                                      skopeo: str) -> None:
    ref = f"{registry.host}/eco/model:v1"
    pushed = push(package, ref, PushOptions(client=PLAIN))
    layout = tmp_path / "skopeo-layout"

    def copy(src: str, dst: str) -> None:
        run = subprocess.run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
                              "--dest-tls-verify=false", src, dst], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr

    copy(f"docker://{ref}", f"oci:{layout}:v1")
    copy(f"oci:{layout}:v1", f"docker://{registry.host}/eco/copy:v1")
    from_layout = pull(f"oci:{layout}:v1", tmp_path / "from-layout.ptm")
    from_copy = pull(f"{registry.host}/eco/copy:v1", tmp_path / "from-copy.ptm", PullOptions(client=PLAIN))
    assert from_layout.digest == from_copy.digest == pushed.digest
    for out in ("from-layout.ptm", "from-copy.ptm"):
        assert (tmp_path / out).read_bytes() == package.read_bytes()


def test_unchanged_package_pulls_nothing_new(registry: Registry, package: Path, tmp_path: Path) -> None:
    """The output being replaced is a local source too: pulling the same version over it moves only small blobs."""
    ref = f"{registry.host}/eco/again:v1"
    push(package, ref, PushOptions(client=PLAIN))
    out = tmp_path / "out.ptm"
    pull(ref, out, PullOptions(client=PLAIN))
    again = pull(ref, out, PullOptions(client=PLAIN, force=True, cache_dir=tmp_path / "empty-cache"))
    assert again.bytes_downloaded < 0.01 * package.stat().st_size, again
    assert out.read_bytes() == package.read_bytes()


def test_split_size_option(package: Path, tmp_path: Path) -> None:
    ref = f"oci:{tmp_path / 'layout'}:v1"
    assert_clean_error(cli("push", package, ref, "--split-size", "1K"), 2)  # below 64 KiB: refused
    run = cli("push", package, ref, "--split-size", "1M", "--json")
    assert run.code == 0, run.err
    manifest, _ = _layout_manifest(tmp_path / "layout", "v1")
    assert sum(1 for d in manifest["layers"] if ANN_PART in d.get("annotations", {})) == 3


def test_too_many_files_for_one_manifest_stay_native(package: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is a layer: a tree with more files than a 4 MiB manifest can list is pushed ptmpack-native."""
    import importlib

    from ptmpack.distribution.oci import ARTIFACT_TYPE

    monkeypatch.setattr(importlib.import_module("ptmpack.distribution.push"), "MODELPACK_MANIFEST_BUDGET", 1000)  # as if the tree had thousands of files
    layout = tmp_path / "layout"
    push(package, f"oci:{layout}:v1")
    manifest, _ = _layout_manifest(layout, "v1")
    assert manifest["artifactType"] == ARTIFACT_TYPE
    pull(f"oci:{layout}:v1", tmp_path / "out.ptm")
    assert (tmp_path / "out.ptm").read_bytes() == package.read_bytes()
