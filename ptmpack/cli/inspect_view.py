"""The human view of ``ptmpack inspect``: the header, entries, metadata and tensors of a package."""

from __future__ import annotations

from typing import Any

from ptmpack.cli.output import Printer


def _header_rows(doc: dict[str, Any], out: Printer) -> list[tuple[str, object]]:
    h = doc["header"]
    rows: list[tuple[str, object]] = [("file", doc["path"]),
                                      ("bytes", out.number(doc["file_size"]))]
    rows += [(key, h[key]) for key in ("version", "package_id", "entry_count", "model_count")]
    rows.append(("flags", ", ".join(h["flags"]) or "-"))
    manifest = doc["manifest"]
    if manifest.get("sealed"):
        rows.append(("manifest", "sealed (encrypted; give a key to see names, sizes and metadata)"))
    else:
        rows += [("created", manifest["created"]), ("tool", manifest["tool"])]
        if manifest["residual_base"]:
            rows.append(("residual base", manifest["residual_base"]))
    if doc.get("encryption"):
        rows.append(("cipher", doc["encryption"]["cipher"]))
        rows.append(("key slots", "; ".join(doc["encryption"]["slots"])))
    rows.append(("signed by", doc["signature"]["signer"] if doc["signature"] else "-"))
    return rows


def _metadata_rows(doc: dict[str, Any], out: Printer) -> list[tuple[str, object]]:
    m = doc["metadata"]["managementinfo"]
    tech = doc["metadata"]["technicalinfo"]
    rows: list[tuple[str, object]] = [(k, m[k]) for k in ("name", "version", "provider", "license", "model_id")
                                      if k in m]
    rows.append(("task", tech.get("task", {}).get("type", "-")))
    ptm = tech.get("ptm_info", {})
    if ptm:
        rows.append(("architecture", ", ".join(ptm.get("architecture", []))))
        rows.append(("layers/heads/hidden",
                     f"{ptm.get('num_layers', '-')}/{ptm.get('num_heads', '-')}/{ptm.get('hidden_size', '-')}"))
    quant = doc.get("quantization")
    if quant:
        group = quant.get("group_size")
        rows.append(("quantization", f"{quant.get('method')} W{quant.get('bits')} "
                                     f"{'group ' + str(group) if group not in (None, 'channel') else 'per channel'} "
                                     f"{'symmetric' if quant.get('symmetric') else 'asymmetric'}"
                                     + (f" ({quant['format']})" if quant.get("format") else "")))
    if "stored_elements" in doc["totals"]:
        rows.append(("stored elements", out.number(doc["totals"]["stored_elements"])))
    else:
        rows.append(("parameters", out.number(doc["totals"]["parameters"])))
    return rows


def _codec(entry: dict[str, Any]) -> str:
    codec = entry.get("codec")
    return "-" if not codec else "+".join(v for v in codec.values() if v != "none") or "raw"


def render_inspect(doc: dict[str, Any], out: Printer) -> None:
    """Print the inspect document on ``out`` (tables on a terminal, tab-separated lines elsewhere)."""
    if doc["type"] == "file":
        out.fields("package", _header_rows(doc, out))
    if doc.get("sealed"):
        return
    out.table("entries", ("path", "kind", "raw", "stored", "codec"),
              [(e["path"], e["kind"], out.number(e["raw_length"]), out.number(e.get("stored_length", e["raw_length"])),
                _codec(e)) for e in doc["entries"]], right=("raw", "stored"))
    out.fields("metadata", _metadata_rows(doc, out))
    if "residual" in doc:
        r = doc["residual"]
        out.fields("residual update", [
            ("base manifest", r["base_manifest_sha256"]),
            ("tensor modes", ", ".join(f"{k} {v}" for k, v in r["modes"].items() if v)),
            ("bits", ", ".join(map(str, r["bits"])) or "-"),
            ("lossless", "yes" if r["lossless"] else "no"),
            ("worst relative error", f"{r['max_rel_fro']:.3g}" if r["max_rel_fro"] is not None else "-"),
            ("carried / removed files", f"{len(r['carried_files'])} / {len(r['removed_files'])}"),
        ])
    if "tensors" in doc:
        out.table("tensors", ("name", "dtype", "shape", "bytes"),
                  [(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", out.number(t["bytes"]))
                   for t in doc["tensors"]], right=("bytes",))
