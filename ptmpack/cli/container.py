"""Commands over the container: init, pack, unpack, verify, inspect, keygen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ptmpack import api
from ptmpack.cli._common import (
    console,
    emit_json,
    opener,
    opener_options,
    pack_config,
    progress_bar,
    protection_options,
)


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--from-hf", type=click.Path(path_type=Path), help="Hugging Face checkpoint directory to import.")
@click.option("--from-gguf", type=click.Path(path_type=Path), help="GGUF file (LLaMA architecture) to import.")
@click.option("--gguf-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Dtype of the weights dequantized from GGUF.")
@click.option("--name", help="Model name for managementinfo.json.")
def init_cmd(directory: Path, from_hf: Path | None, from_gguf: Path | None, gguf_dtype: str, name: str | None) -> None:
    """Lay out a package tree (Model/, Program/, Meta-info/) with metadata."""
    written = api.init(directory, from_hf=from_hf, from_gguf=from_gguf, name=name, gguf_dtype=gguf_dtype)
    console().print(f"[green]initialised[/] {directory} ({len(written)} files)")


@click.command("pack")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@click.option("--compress", default="none", show_default=True, help="none, zstd or zstd:LEVEL.")
@click.option("--chunk-size", default="4M", show_default=True, help="Chunk size for compressed/encrypted entries.")
@protection_options
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def pack_cmd(directory: Path, output: Path, compress: str, chunk_size: str, force: bool, as_json: bool,
             **protection: Any) -> None:
    """Pack a package tree into a .ptm container."""
    config = pack_config(compress=compress, chunk_size=chunk_size, **protection)
    with progress_bar("packing", api.tree_bytes(directory), not as_json) as progress:
        report = api.pack(directory, output, config, force=force, progress=progress)
    if as_json:
        emit_json(report.to_json())
        return
    doc = report.to_json()
    console().print(f"[green]packed[/] {output}: {doc['entries']} files, {doc['raw_bytes']:,} bytes -> "
                    f"{doc['file_bytes']:,} bytes")


@click.command("unpack")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Directory to create.")
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM): refuse the package unless it carries a valid signature by it.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--dequantize", is_flag=True, help="Write float weights instead of quantized ones (compressed packages).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def unpack_cmd(package: Path, output: Path, passphrase_file: Path | None, key_file: Path | None,
               identity: Path | None, pubkey: Path | None, force: bool, dequantize: bool, as_json: bool) -> None:
    """Unpack a .ptm container into a package tree (atomically)."""
    key = api.load_public_key(pubkey) if pubkey else None
    size = package.stat().st_size if package.is_file() else 0
    with progress_bar("unpacking", size, not as_json) as progress:
        report = api.unpack(package, output, opener=opener(passphrase_file, key_file, identity), pubkey=key,
                            force=force, progress=progress, dequantize=dequantize)
    if as_json:
        emit_json(report.to_json())
        return
    console().print(f"[green]unpacked[/] {report.files} files, {report.bytes:,} bytes into {report.target}")


@click.command("verify")
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path), help="Ed25519 public key (PEM) the signature must verify with.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_cmd(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
               pubkey: Path | None, as_json: bool) -> None:
    """Verify a package or tree: layout, digests, tags, schemas, signature."""
    key = api.load_public_key(pubkey) if pubkey else None
    size = package.stat().st_size if package.is_file() else 0
    with progress_bar("verifying", size, not as_json) as progress:
        report = api.verify(package, opener=opener(passphrase_file, key_file, identity), pubkey=key,
                            progress=progress)
    if as_json:
        emit_json(report.to_json())
        return
    con = console()
    con.print(f"[green]OK[/] {report.path}: {report.entries} files, {report.bytes:,} bytes")
    con.print(f"checked: {', '.join(report.checks)}")
    if report.signature == "unchecked":
        con.print(f"[yellow]signed by {report.signer}, signature not checked[/] (pass --pubkey to check it)")
    elif report.signature == "verified":
        con.print(f"[green]signature verified[/] (signer {report.signer})")
    if not report.decrypted:
        con.print("[yellow]content not decrypted[/] (no key given): the signature covers every byte of the "
                  "file, so it is exactly what the signer made; give a key to check the plaintext digests too")


@click.command("inspect")
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--tensors", is_flag=True, help="List every tensor (name, dtype, shape, bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect_cmd(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
                tensors: bool, as_json: bool) -> None:
    """Show a package's headers, entries, metadata and tensors."""
    doc = api.inspect(package, opener=opener(passphrase_file, key_file, identity), tensors=tensors).to_json()
    if as_json:
        emit_json(doc)
        return
    from ptmpack.cli.inspect_view import render_inspect

    render_inspect(doc, console())


@click.command("keygen")
@click.option("--type", "kind", required=True, type=click.Choice(["symmetric", "x25519", "ed25519"]))
@click.option("-o", "--output", "prefix", required=True, type=click.Path(path_type=Path),
              help="Writes PREFIX.key (and PREFIX.pub).")
def keygen_cmd(kind: str, prefix: Path) -> None:
    """Make a key: symmetric key file, X25519 recipient pair, or Ed25519 signing pair."""
    for path in api.keygen(kind, prefix):
        console().print(f"wrote {path}")
