"""Distribution benchmark: push/pull throughput against a loopback registry vs curl, and bytes moved per update.

    python bench/bench_distribution.py                  # all-mpnet-base-v2 (438 MB) + the MiniLM fine-tune pair
    python bench/bench_distribution.py --model minilm   # all-MiniLM-L6-v2 only (90 MB), quicker
    python bench/bench_distribution.py --model synthetic --cases throughput,resume   # no model download
    python bench/bench_distribution.py --json bench/out/distribution.json

Registry: Debian's docker-registry (CNCF distribution v2.8) on 127.0.0.1, filesystem
storage under /tmp, plain HTTP (loopback only). Each round pushes the package to a fresh
repository (so every blob is uploaded; the registry's repositories do not see each
other's blobs), pulls it with an empty cache (download, digest checks, assembly and the
full ``verify``), then fetches the same blobs with curl (4 parallel transfers, like
ptmpack's 4 workers, written to files like ptmpack's cache). Ratios are throughputs:
ptmpack / curl (≥ 1 means ptmpack is as fast).

Bytes moved for version N+1 after N (with N's blobs in the cache):
  1. a metadata-only change (managementinfo version bump) of the large model;
  2. a real fine-tune: all-MiniLM-L6-v2 A and B = A fine-tuned (bench_residual's pair,
     300 AdamW steps on the Lee corpus): every tensor moved;
  3. the same pair with ``pull --delta`` against a published residual (int8 and lossless).

``--cases scale [--scale-gb 20]``: a package of that many GB in 4 safetensors shards
(written sparse: a real header, the data a hole), packed raw and pushed to the loopback
registry; prints the layer count and the manifest's bytes (the bar: layers = files + at
most 2, manifest <= 64 KiB at 20 GB).

``--cases resume [--kills 5]``: a 200 MB raw package is pulled by the ``ptmpack`` command
through a byte-counting TCP proxy in front of the registry; the pull is SIGKILLed at
random points of its download (after the cache grew by 5-40 % of what was left)
``--kills`` times, then run to the end. Re-transferred bytes = what the
proxy carried from the registry to the client, minus the package's blobs and the
small per-run documents (manifest, recipe): what interruptions cost.

``--cases updates``: the three update kinds of docs/DISTRIBUTION.md §2.3 on a 55 MB raw
package (ModelPack artifact; weights written by the safetensors library), version N
local as ``PullOptions.base`` and an empty cache, so only the chunk-digest index decides
what moves: metadata only, one tensor changed, every weight changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from ptmpack import api  # noqa: E402
from ptmpack.distribution import ClientOptions, PullOptions, PushOptions, pull, push  # noqa: E402
from ptmpack.distribution.cache import BlobCache  # noqa: E402
from ptmpack.distribution.fetch import resolve  # noqa: E402
from ptmpack.distribution.reference import parse_reference  # noqa: E402
from ptmpack.distribution.registry import RegistryStore  # noqa: E402
from tests._support.registry import Registry, registry_available  # noqa: E402

PLAIN = ClientOptions(plain_http=True)
WORK = common.TMP / "distribution"


class Phases:
    """Progress hook recording when each phase (hashing, uploading, downloading, ...) starts."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def start(self, label: str, total: int) -> None:
        self.marks.append((label, time.perf_counter()))

    def advance(self, n: int) -> None:
        return

    def durations(self, end: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for (label, t0), (_, t1) in zip(self.marks, [*self.marks[1:], ("end", end)], strict=True):
            out[label] = out.get(label, 0.0) + (t1 - t0)
        return out


def blob_urls(host: str, ref: str) -> list[tuple[str, int, str]]:
    """(URL, size, digest) of every blob a pull of ``ref`` fetches: the layers, and the config of native artifacts."""
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        got = resolve(store, parse_reference(ref), BlobCache(WORK / "probe-cache"))
        descs = [*([] if got.manifest.is_modelpack else [got.manifest.config]), *got.manifest.layers]
    finally:
        store.close()
    repo = parse_reference(ref).repository
    return [(f"http://{host}/v2/{repo}/blobs/{d.digest}", d.size, d.digest) for d in dict.fromkeys(descs)]


def curl_fetch(urls: list[tuple[str, int, str]], dest: Path) -> float:
    """Fetch the blobs with curl (4 parallel transfers) into ``dest``; the seconds it took."""
    common.rm(dest)
    dest.mkdir(parents=True)
    argv = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", "4"]
    for i, (url, _, _) in enumerate(urls):
        argv += [url, "-o", str(dest / f"b{i}")]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    took = time.perf_counter() - t0
    got = sum(p.stat().st_size for p in dest.iterdir())
    if got != sum(n for _, n, _ in urls):
        raise RuntimeError(f"curl fetched {got} bytes, expected {sum(n for _, n, _ in urls)}")
    return took


def curl_upload(host: str, repo: str, urls: list[tuple[str, int, str]], src: Path) -> float:
    """Upload the blobs curl fetched to a fresh repository with ``curl -T`` (4 parallel): POST, then PUT ?digest=."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client() as client:
        locations = []
        for _ in urls:
            r = client.post(f"http://{host}/v2/{repo}/blobs/uploads/")
            locations.append(str(r.url.join(r.headers["location"])))
    argv = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", "4"]
    for i, ((_, _, digest), loc) in enumerate(zip(urls, locations, strict=True)):
        argv += ["-T", str(src / f"b{i}"), str(httpx.URL(loc).copy_add_param("digest", digest)),
                 "-H", "Content-Type: application/octet-stream", "-o", "/dev/null"]
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def model_tree(name: str) -> Path:
    if name == "synthetic":  # 205 MB of float32 written by the safetensors library: for speed, not quality
        from tests.distribution.packages import write_model_tree

        common.rm(WORK / "synthetic-tree")
        return write_model_tree(WORK / "synthetic-tree", rows=200_000)
    if name == "mpnet":
        return common.hf_tree("mpnet", common.mpnet_checkpoint())
    return common.hf_tree("minilm", common.minilm_checkpoint())


def bumped_copy(tree: Path, dest: Path, version: str) -> Path:
    """The same tree with only managementinfo.json's version changed (weights hard-linked)."""
    common.rm(dest)
    shutil.copytree(tree, dest, copy_function=os.link)
    mi = dest / "Meta-info" / "managementinfo.json"
    doc = json.loads(mi.read_text())
    doc["version"] = version
    mi.unlink()
    mi.write_text(json.dumps(doc, indent=2))
    return dest


def _round(reg: Registry, pkg: Path, base: str, urls: list[tuple[str, int, str]], i: int) -> dict[str, object]:
    """One throughput round; even rounds run curl first, odd rounds ptmpack first."""
    size = pkg.stat().st_size
    out, cache = WORK / "pulled.ptm", WORK / "cache"
    timing: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}

    def our_pull() -> None:
        common.rm(out, cache)
        ph = Phases()
        t0 = time.perf_counter()
        pl = pull(base, out, PullOptions(client=PLAIN, cache_dir=cache), ph)
        timing["pull_s"] = time.perf_counter() - t0
        phases["pull"] = ph.durations(time.perf_counter())
        if out.stat().st_size != size or pl.bytes_downloaded < 0.99 * size:
            raise RuntimeError("the pull did not move the whole package")
        common.rm(out, cache)

    def our_push() -> None:
        ph = Phases()
        t0 = time.perf_counter()
        pr = push(pkg, f"{reg.host}/bench/tp{i}:v1", PushOptions(client=PLAIN, auto_mount=False), ph)
        timing["push_s"] = time.perf_counter() - t0
        phases["push"] = ph.durations(time.perf_counter())
        if pr.bytes_uploaded < size * 0.99:  # a fresh repository: a real upload, not a mount
            raise RuntimeError("the push did not upload the whole package")

    def curl_get() -> None:
        timing["curl_s"] = curl_fetch(urls, WORK / "curl")

    def curl_put() -> None:
        timing["curl_upload_s"] = curl_upload(reg.host, f"bench/curlup{i}", urls, WORK / "curl")

    downs = (our_pull, curl_get) if i % 2 else (curl_get, our_pull)
    ups = (our_push, curl_put) if i % 2 == 0 else (curl_put, our_push)
    for step in (*downs, *ups):  # curl's files must exist before curl -T: curl_get runs in downs
        step()
    common.rm(WORK / "curl")
    row: dict[str, object] = {**timing, "pull_download_s": phases["pull"].get("downloading", 0.0),
                              "push_phases": phases["push"], "pull_phases": phases["pull"]}
    common.log(f"round {i}: pull {timing['pull_s']:.2f}s vs curl {timing['curl_s']:.2f}s; push {timing['push_s']:.2f}s "
               f"vs curl -T {timing['curl_upload_s']:.2f}s")
    return row


def throughput(reg: Registry, pkg: Path, repeat: int) -> dict[str, object]:
    """Pull vs curl fetching the same blobs, push vs ``curl -T`` of them, alternating which goes first each round."""
    size = pkg.stat().st_size
    base = f"{reg.host}/bench/tp-base:v1"
    push(pkg, base, PushOptions(client=PLAIN, auto_mount=False))  # what every pull and curl fetch reads
    urls = blob_urls(reg.host, base)
    rows = []
    load_before = os.getloadavg()[0]
    for i in range(repeat):
        common.wait_idle(20)
        rows.append(_round(reg, pkg, base, urls, i))

    def med(k: str) -> float:
        return statistics.median(float(r[k]) for r in rows)  # type: ignore[arg-type]

    return {"package_bytes": size, "rounds": rows, "push_MBps": size / med("push_s") / common.MB,
            "pull_MBps": size / med("pull_s") / common.MB, "curl_MBps": size / med("curl_s") / common.MB,
            "pull_vs_curl": med("curl_s") / med("pull_s"),
            "pull_download_phase_vs_curl": med("curl_s") / med("pull_download_s"),
            "push_vs_curl": med("curl_s") / med("push_s"), "curl_upload_MBps": size / med("curl_upload_s") / common.MB,
            "push_vs_curl_upload": med("curl_upload_s") / med("push_s"),
            "pull_vs_curl_rounds": [float(r["curl_s"]) / float(r["pull_s"]) for r in rows],  # type: ignore[arg-type]
            "push_vs_curl_upload_rounds": [float(r["curl_upload_s"]) / float(r["push_s"]) for r in rows],  # type: ignore[arg-type]
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def moved(reg: Registry, repo: str, v1: Path, v2: Path, cache: Path) -> dict[str, object]:
    """Push v1 and v2, pull v1 then v2 through one cache: what v2 cost on each side."""
    push(v1, f"{reg.host}/{repo}:v1", PushOptions(client=PLAIN))
    up = push(v2, f"{reg.host}/{repo}:v2", PushOptions(client=PLAIN))
    common.rm(cache)
    local = WORK / f"{repo.replace('/', '_')}.ptm"
    common.rm(local)
    pull(f"{reg.host}/{repo}:v1", local, PullOptions(client=PLAIN, cache_dir=cache))
    down = pull(f"{reg.host}/{repo}:v2", WORK / "v2.ptm", PullOptions(client=PLAIN, cache_dir=cache, force=True))
    identical = (WORK / "v2.ptm").read_bytes() == v2.read_bytes()
    common.rm(WORK / "v2.ptm")
    return {"v2_bytes": v2.stat().st_size, "uploaded": up.bytes_uploaded, "downloaded": down.bytes_downloaded,
            "download_fraction": down.bytes_downloaded / v2.stat().st_size, "identical": identical, "local_v1": local}


def sparse_shard(path: Path, size: int) -> None:
    """A safetensors file of one uint8 tensor of ``size`` bytes: 4 KiB of random bytes (so shards differ), then a
    hole (fast to make, reads as zeros)."""
    header = json.dumps({"weight": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + os.urandom(4096))
        f.truncate(8 + len(header) + size)


def scale(reg: Registry, gb: float) -> dict[str, object]:
    """Pack ``gb`` GB in 4 shards raw, push to a fresh repository: layers and manifest bytes."""
    from ptmpack.metadata import documents as meta

    tree = WORK / "scale-tree"
    (tree / "Model").mkdir(parents=True)
    (tree / "Meta-info").mkdir()
    shard = int(gb * 1e9 / 4)
    for k in range(4):
        sparse_shard(tree / "Model" / f"model-{k + 1:05d}-of-00004.safetensors", shard)
    (tree / "Model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tree / "Meta-info" / "managementinfo.json").write_text(json.dumps(meta.management_template("scale bench")))
    (tree / "Meta-info" / "technicalinfo.json").write_text(json.dumps(meta.technical_template()))
    pkg = WORK / "scale.ptm"
    t0 = time.perf_counter()
    api.pack(tree, pkg)
    common.rm(tree)
    t1 = time.perf_counter()
    ref = f"{reg.host}/bench/scale:v1"
    pushed = push(pkg, ref, PushOptions(client=PLAIN))
    t2 = time.perf_counter()
    assert pushed.blobs_uploaded == pushed.blobs, "a fresh repository receives every blob"
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        data, _ = store.get_manifest("v1")  # type: ignore[misc]
    finally:
        store.close()
    manifest = json.loads(data)
    out = {"package_bytes": pkg.stat().st_size, "files": 7, "layers": len(manifest["layers"]),
           "manifest_bytes": len(data), "pack_s": round(t1 - t0, 1), "push_s": round(t2 - t1, 1),
           "push_MBps": pkg.stat().st_size / common.MB / (t2 - t1), "artifact": manifest["artifactType"]}
    common.rm(pkg)
    return out


PROXY_BUFFER = 64 * 1024
"""The proxy's read size and client-side send buffer (the kernel doubles it): bytes it has read from the
registry but not delivered when the client dies count as re-transferred, so they are kept small (at most
about 200 KiB) for the count to be what reached the client. With a 1 MiB read and an autotuned send buffer
(up to 4 MiB) the proxy itself held about 5 MB at each kill."""


class CountingProxy:
    """A TCP proxy on 127.0.0.1 counting the bytes the upstream sends to clients."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream, self.down = upstream, 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            # a router, not a buffer: what the proxy holds was not delivered to the client, yet it counts as sent
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PROXY_BUFFER)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: object, dst: object, count: bool) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            while block := src.recv(PROXY_BUFFER):  # type: ignore[attr-defined]
                if count:
                    with self.lock:
                        self.down += len(block)
                dst.sendall(block)  # type: ignore[attr-defined]
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.sock.close()


def resume(reg: Registry, kills: int) -> dict[str, object]:
    """SIGKILL a CLI pull of a 200 MB package at random points, then finish it: bytes fetched again."""
    import random
    import signal

    from tests.distribution.packages import pack_kind, write_model_tree

    folder = WORK / "resume"
    pkg = pack_kind(write_model_tree(folder / "tree", rows=200_000), folder / "p.ptm", "raw")
    ref = f"{reg.host}/bench/resume:v1"
    push(pkg, ref, PushOptions(client=PLAIN))
    store = RegistryStore(parse_reference(ref), PLAIN)
    try:
        fetched = resolve(store, parse_reference(ref), BlobCache(folder / "probe"))
    finally:
        store.close()
    blob_bytes = sum(d.size for d in fetched.manifest.blobs)
    proxy = CountingProxy(("127.0.0.1", reg.port))
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
    out = folder / "out.ptm"
    cmd = [sys.executable, "-m", "ptmpack", "pull", f"{proxy.host}/bench/resume:v1", "-o", str(out), "--plain-http",
           "--json"]
    t0 = time.perf_counter()
    full = subprocess.run(cmd, env={**env, "XDG_CACHE_HOME": str(folder / "cache-full")}, capture_output=True)
    duration = time.perf_counter() - t0
    assert full.returncode == 0, full.stderr
    common.rm(out)
    per_run = proxy.down - blob_bytes  # manifest, recipe, HTTP headers of one uninterrupted pull
    rng = random.Random(16)
    proxy.down, done_kills, lost = 0, 0, []

    def kept() -> int:  # bytes of blobs this machine keeps for the next run: complete or partial, journaled
        cache = BlobCache(folder / "cache" / "ptmpack")
        return sum(e.size for e in cache.entries()) + cache.partial_bytes()

    for _ in range(kills):
        before, sent = kept(), proxy.down
        # a random point of the download itself (a timer mostly fired before it began, or after it ended)
        target = before + rng.uniform(0.05, 0.4) * (blob_bytes - before)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and kept() < target:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_kills += 1
            time.sleep(0.2)  # let the proxy see the connection close
            lost.append(proxy.down - sent - (kept() - before) - per_run)
        if out.exists():
            break
    last = subprocess.run(cmd, env=env, capture_output=True)
    assert last.returncode == 0 or out.exists(), last.stderr
    identical = out.read_bytes() == pkg.read_bytes()
    proxy.close()
    runs = done_kills + 1
    extra = proxy.down - blob_bytes - runs * per_run
    result = {"package_bytes": pkg.stat().st_size, "blob_bytes": blob_bytes, "kills": done_kills,
              "proxied_bytes": proxy.down, "per_run_overhead": per_run, "retransferred": max(extra, 0),
              "lost_per_kill": lost,
              "identical": identical, "uninterrupted_s": round(duration, 2)}
    common.rm(folder)
    return result


def updates(reg: Registry) -> list[dict[str, object]]:
    """Bytes pushed and pulled for the three update kinds, version N local, nothing cached."""
    from tests.distribution.packages import pack_kind, write_model_tree

    folder = WORK / "updates"
    v1 = pack_kind(write_model_tree(folder / "t1", rows=54000), folder / "v1.ptm", "raw")
    kinds = {"metadata only": write_model_tree(folder / "t2", rows=54000, version="1.0.1"),
             "one tensor changed": write_model_tree(folder / "t3", rows=54000, version="1.1.0", bump=0.5),
             "every weight changed": write_model_tree(folder / "t4", rows=54000, seed=7, version="2.0.0")}
    repo = f"{reg.host}/bench/updates"
    push(v1, f"{repo}:v1", PushOptions(client=PLAIN))
    out = []
    for i, (kind, tree) in enumerate(kinds.items()):
        pkg = pack_kind(tree, folder / f"n{i}.ptm", "raw")
        up = push(pkg, f"{repo}:n{i}", PushOptions(client=PLAIN))
        got = folder / f"o{i}.ptm"
        down = pull(f"{repo}:n{i}", got, PullOptions(client=PLAIN, base=v1, cache_dir=folder / f"cache{i}"))
        out.append({"update": kind, "bytes": pkg.stat().st_size, "uploaded": up.bytes_uploaded,
                    "downloaded": down.bytes_downloaded, "identical": got.read_bytes() == pkg.read_bytes()})
    common.rm(folder)
    return out


def delta_case(reg: Registry, repo: str, a: Path, b: Path, bits: int | str, cache: Path) -> dict[str, object]:
    from ptmpack.residual import diff_residual

    delta = WORK / f"delta-{bits}.ptm"
    common.rm(delta)
    diff_residual(a, b, delta, bits=bits)
    push(a, f"{reg.host}/{repo}:v1", PushOptions(client=PLAIN))
    push(b, f"{reg.host}/{repo}:v2", PushOptions(client=PLAIN))
    push(delta, f"{reg.host}/{repo}:v2", PushOptions(client=PLAIN, residual=True))
    common.rm(cache)
    local = WORK / f"local-{bits}.ptm"
    common.rm(local)
    pull(f"{reg.host}/{repo}:v1", local, PullOptions(client=PLAIN, cache_dir=cache))
    r = pull(f"{reg.host}/{repo}:v2", local, PullOptions(client=PLAIN, cache_dir=cache, delta=True))
    out = {"bits": bits, "residual_bytes": delta.stat().st_size, "downloaded": r.bytes_downloaded,
           "download_fraction": r.bytes_downloaded / b.stat().st_size, "method": r.method,
           "identical": local.read_bytes() == b.read_bytes(), "note": r.note}
    common.rm(delta, local)
    return out


def finetune_pair(steps: int) -> tuple[Path, Path]:
    """A = all-MiniLM-L6-v2, B = A fine-tuned: bench_residual's cached 300-step pair, or a shorter run of the
    same recipe (same seed, batch, length, learning rate) when ``steps`` asks for one."""
    import bench_residual as br

    if steps == br.FT["steps"]:
        b_weights = br.finetuned_weights()
    else:
        b_weights = common.CACHE / "distribution" / f"minilm-ft-s{steps}.safetensors"
        if not b_weights.exists():
            b_weights.parent.mkdir(parents=True, exist_ok=True)
            common.log(f"fine-tuning MiniLM for {steps} steps on the CPU")
            tmp = b_weights.with_suffix(".partial")
            br.real.finetune(common.minilm_checkpoint(), tmp, **{**br.FT, "steps": steps})  # type: ignore[arg-type]
            tmp.rename(b_weights)
    return (br.tree_for("a", common.minilm_checkpoint() / "model.safetensors"), br.tree_for(f"ft{steps}", b_weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mpnet", "minilm", "synthetic"), default="mpnet")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="throughput,metadata,finetune",
                        help="comma-separated subset of throughput, metadata, finetune, updates, scale, resume")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of the resume case")
    parser.add_argument("--scale-gb", type=float, default=20.0, help="package size of the scale case")
    parser.add_argument("--ft-steps", type=int, default=300,
                        help="fine-tune steps of the MiniLM pair (300 = bench_residual's cached pair)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not registry_available() or not shutil.which("curl"):
        sys.exit("needs docker-registry (apt install docker-registry) and curl")
    common.rm(WORK)
    WORK.mkdir(parents=True)
    cases = set(args.cases.split(","))
    results: dict[str, object] = {"machine": common.machine_info(), "model": args.model}
    pkg = WORK / f"{args.model}.ptm"
    if cases & {"throughput", "metadata"}:
        tree = model_tree(args.model)
        api.pack(tree, pkg)
    with Registry(WORK / "registry") as reg:
        common.log(f"registry at {reg.host}")
        if "throughput" in cases:
            results["throughput"] = throughput(reg, pkg, args.repeat)
        if "metadata" in cases:
            v2 = WORK / f"{args.model}-v2.ptm"
            api.pack(bumped_copy(tree, WORK / "tree-v2", "9.9.9"), v2)
            meta = moved(reg, "bench/meta", pkg, v2, WORK / "cache-meta")
            meta.pop("local_v1")
            results["metadata_only"] = meta
            common.rm(v2, WORK / "tree-v2")
        if "updates" in cases:
            results["updates"] = updates(reg)
        if "scale" in cases:
            results["scale"] = scale(reg, args.scale_gb)
        if "resume" in cases:
            results["resume"] = resume(reg, args.kills)
        if "finetune" in cases:
            a_tree, b_tree = finetune_pair(args.ft_steps)
            results["finetune_steps"] = args.ft_steps
            a, b = WORK / "ft-a.ptm", WORK / "ft-b.ptm"
            api.pack(a_tree, a)
            api.pack(b_tree, b)
            ft = moved(reg, "bench/finetune", a, b, WORK / "cache-ft")
            ft.pop("local_v1")
            results["finetune_full"] = ft
            results["finetune_delta"] = [delta_case(reg, f"bench/delta{bits}", a, b, bits, WORK / f"cache-d{bits}")
                                         for bits in (8, 0)]
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    common.rm(WORK)


def report(r: dict[str, object]) -> None:
    print(f"\n## Distribution ({r['model']}, loopback docker-registry, {r['machine'].get('cpu', '')})\n")  # type: ignore[union-attr]
    tp = r.get("throughput")
    if isinstance(tp, dict):
        print(f"package {tp['package_bytes'] / common.MB:.1f} MB: push {tp['push_MBps']:.0f} MB/s, pull "
              f"(download + assembly + verify) {tp['pull_MBps']:.0f} MB/s, curl (4 parallel) {tp['curl_MBps']:.0f} MB/s")
        print(f"ratio pull/curl {tp['pull_vs_curl']:.2f}x, download phase/curl {tp['pull_download_phase_vs_curl']:.2f}x "
              f"(target >= 0.8x); push/curl -T {tp['push_vs_curl_upload']:.2f}x (curl -T {tp['curl_upload_MBps']:.0f} MB/s; "
              "target >= 0.8x)")
        print(f"per round: pull/curl {', '.join(f'{x:.2f}' for x in tp['pull_vs_curl_rounds'])}; push/curl -T "
              f"{', '.join(f'{x:.2f}' for x in tp['push_vs_curl_upload_rounds'])}; load average "
              f"{tp['load_average'][0]} before, {tp['load_average'][1]} after (2 cores)")
    m = r.get("metadata_only")
    if isinstance(m, dict):
        print(f"metadata-only N+1: uploaded {m['uploaded']:,} B, downloaded {m['downloaded']:,} B "
              f"= {m['download_fraction']:.5f} of {m['v2_bytes']:,} B (byte-identical: {m['identical']})")
    sc = r.get("scale")
    if isinstance(sc, dict):
        print(f"scale: {sc['package_bytes'] / 1e9:.1f} GB package, {sc['files']} files in 4 safetensors shards -> "
              f"{sc['layers']} layers (files + {sc['layers'] - sc['files']}), manifest {sc['manifest_bytes']:,} B "
              f"(bar 65,536); pack {sc['pack_s']} s, push {sc['push_s']} s ({sc['push_MBps']:.0f} MB/s), {sc['artifact']}")
    rs = r.get("resume")
    if isinstance(rs, dict):
        print(f"resume: {rs['package_bytes'] / 1e6:.0f} MB package, {rs['kills']} SIGKILLs at random points then a "
              f"final run: re-transferred {rs['retransferred']:,} B in all (registry sent {rs['proxied_bytes']:,} B for "
              f"{rs['blob_bytes']:,} B of blobs + {rs['per_run_overhead']:,} B of documents per run); per kill: "
              f"{', '.join(f'{n:,}' for n in rs['lost_per_kill'])} B (max {max(rs['lost_per_kill'] or [0]):,}; bar: one "
              f"4 MiB chunk, 4,194,304); "
              f"byte-identical: {rs['identical']}")
    for u in r.get("updates") or []:  # type: ignore[union-attr]
        print(f"{u['update']}: pushed {u['uploaded']:,} B, pulled {u['downloaded']:,} B = "
              f"{u['downloaded'] / u['bytes']:.4f} of {u['bytes']:,} B (N local, no cache; byte-identical: {u['identical']})")
    f = r.get("finetune_full")
    if isinstance(f, dict):
        print(f"fine-tune pair: all-MiniLM-L6-v2 and {r.get('finetune_steps')} AdamW steps of it (real text)")
        print(f"fine-tune N+1, plain pull: downloaded {f['downloaded']:,} B = {f['download_fraction']:.3f} of B "
              f"({f['v2_bytes']:,} B)")
        for d in r["finetune_delta"]:  # type: ignore[union-attr]
            print(f"fine-tune N+1, pull --delta (residual bits={d['bits']}): downloaded {d['downloaded']:,} B = "
                  f"{d['download_fraction']:.3f} of B (residual package {d['residual_bytes']:,} B, "
                  f"method {d['method']}, byte-identical to B: {d['identical']})")


if __name__ == "__main__":
    main()
