"""The human view of ``ptmpack inspect``: tables of the header, entries, metadata and tensors."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_inspect(doc: dict[str, Any], con: Console) -> None:
    """Print the inspect document as tables on ``con``."""
    if doc["type"] == "file":
        h = doc["header"]
        t = Table(title=f"{doc['path']} ({doc['file_size']:,} bytes)", show_header=False)
        for key in ("version", "package_id", "entry_count", "model_count"):
            t.add_row(key, str(h[key]))
        t.add_row("flags", ", ".join(h["flags"]) or "-")
        t.add_row("created", doc["manifest"]["created"])
        t.add_row("tool", doc["manifest"]["tool"])
        if doc["manifest"]["residual_base"]:
            t.add_row("residual base", doc["manifest"]["residual_base"])
        if doc.get("encryption"):
            t.add_row("cipher", doc["encryption"]["cipher"])
            t.add_row("key slots", "; ".join(doc["encryption"]["slots"]))
        if doc["signature"]:
            t.add_row("signed by", doc["signature"]["signer"])
        con.print(t)
    entries = Table(title="entries")
    for col in ("path", "kind", "raw", "stored", "codec"):
        entries.add_column(col, justify="right" if col in ("raw", "stored") else "left")
    for e in doc["entries"]:
        codec = e.get("codec")
        codec_text = "-" if not codec else "+".join(v for v in codec.values() if v != "none") or "raw"
        entries.add_row(e["path"], e["kind"], f"{e['raw_length']:,}", f"{e.get('stored_length', e['raw_length']):,}",
                        codec_text)
    con.print(entries)
    m = doc["metadata"]["managementinfo"]
    tech = doc["metadata"]["technicalinfo"]
    info = Table(title="metadata", show_header=False)
    for key in ("name", "version", "provider", "license", "model_id"):
        if key in m:
            info.add_row(key, str(m[key]))
    task = tech.get("task", {})
    info.add_row("task", str(task.get("type", "-")))
    ptm = tech.get("ptm_info", {})
    if ptm:
        info.add_row("architecture", ", ".join(ptm.get("architecture", [])))
        info.add_row("layers/heads/hidden", f"{ptm.get('num_layers', '-')}/{ptm.get('num_heads', '-')}/{ptm.get('hidden_size', '-')}")
    info.add_row("parameters", f"{doc['totals']['parameters']:,}")
    con.print(info)
    if "residual" in doc:
        r = doc["residual"]
        rt = Table(title="residual update", show_header=False)
        rt.add_row("base manifest", r["base_manifest_sha256"])
        rt.add_row("tensor modes", ", ".join(f"{k} {v}" for k, v in r["modes"].items() if v))
        rt.add_row("bits", ", ".join(map(str, r["bits"])) or "-")
        rt.add_row("lossless", "yes" if r["lossless"] else "no")
        rt.add_row("worst relative error", f"{r['max_rel_fro']:.3g}" if r["max_rel_fro"] is not None else "-")
        rt.add_row("carried / removed files", f"{len(r['carried_files'])} / {len(r['removed_files'])}")
        con.print(rt)
    if "tensors" in doc:
        tt = Table(title="tensors")
        for col in ("name", "dtype", "shape", "bytes"):
            tt.add_column(col, justify="right" if col == "bytes" else "left")
        for t in doc["tensors"]:
            tt.add_row(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", f"{t['bytes']:,}")
        con.print(tt)
