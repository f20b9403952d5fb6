"""Commands over the container: init, pack, unpack, verify, inspect, keygen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ptmpack import api
from ptmpack.cli._common import json_option, opener, opener_options, pack_config, protection_options
from ptmpack.cli.output import Printer, count, emit, file_ref, file_ref_soon, human_size
from ptmpack.cli.progress import byte_progress, progress_option


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--from-hf", type=click.Path(path_type=Path), help="Hugging Face checkpoint directory to import.")
@click.option("--from-gguf", type=click.Path(path_type=Path), help="GGUF file (LLaMA architecture) to import.")
@click.option("--gguf-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Dtype of the weights dequantized from GGUF.")
@click.option("--name", help="Model name for managementinfo.json.")
@click.option("--provider", help="Provider (organisation) for managementinfo.json.")
@click.option("--license", "license_", metavar="SPDX", help="License as an SPDX id, e.g. Apache-2.0.")
@click.option("--model-version", metavar="SEMVER", help="Model version (semver) for managementinfo.json.")
@json_option
def init_cmd(directory: Path, from_hf: Path | None, from_gguf: Path | None, gguf_dtype: str, name: str | None,
             provider: str | None, license_: str | None, model_version: str | None, as_json: bool) -> None:
    """Lay out a package tree (Model/, Program/, Meta-info/) with metadata."""
    written = api.init(directory, from_hf=from_hf, from_gguf=from_gguf, name=name, gguf_dtype=gguf_dtype,
                       provider=provider, license=license_, model_version=model_version)
    if as_json:
        emit({"files": written}, output=file_ref(directory))
        return
    Printer().status("initialised", f"{directory} ({count(len(written), 'file')})")


@click.command("pack")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@click.option("--compress", default="none", show_default=True, help="none, zstd or zstd:LEVEL.")
@click.option("--chunk-size", default="4M", show_default=True, help="Chunk size for compressed/encrypted entries.")
@protection_options
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@progress_option
@json_option
def pack_cmd(directory: Path, output: Path, compress: str, chunk_size: str, force: bool, as_json: bool,
             **protection: Any) -> None:
    """Pack a package tree into a .ptm container."""
    config = pack_config(compress=compress, chunk_size=chunk_size, **protection)
    with byte_progress("packing", lambda: api.tree_bytes(directory)) as progress:
        report = api.pack(directory, output, config, force=force, progress=progress)
    doc = report.to_json()
    if as_json:
        emit(doc, input=file_ref(directory), output=file_ref(output), drop=("file_bytes",))
        return
    Printer().status("packed", f"{output}: {count(doc['entries'], 'file')}, {human_size(doc['raw_bytes'])} -> "
                               f"{human_size(report.file_bytes)} ({report.file_bytes} bytes)")


@click.command("unpack")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Directory to create (missing parent directories are created too).")
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM): refuse the package unless it carries a valid signature by it.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--dequantize", is_flag=True, help="Write float weights instead of quantized ones (compressed packages).")
@progress_option
@json_option
def unpack_cmd(package: Path, output: Path, passphrase_file: Path | None, key_file: Path | None,
               identity: Path | None, pubkey: Path | None, force: bool, dequantize: bool, as_json: bool) -> None:
    """Unpack a .ptm container into a package tree (atomically)."""
    key = api.load_public_key(pubkey) if pubkey else None
    keys = opener(passphrase_file, key_file, identity)
    with byte_progress("unpacking", lambda: api.package_bytes(package)) as progress:
        report = api.unpack(package, output, opener=keys, pubkey=key,
                            force=force, progress=progress, dequantize=dequantize)
    if as_json:
        emit(report.to_json(), input=file_ref(package), output=file_ref(output), drop=("target", "bytes"))
        return
    # --dequantize writes float weights larger than the packed entries the report counts: say what was written
    written = api.tree_bytes(output) if dequantize else report.bytes
    Printer().status("unpacked", f"{count(report.files, 'file')}, {human_size(written or 0)} into {report.target}")


@click.command("verify")
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path), help="Ed25519 public key (PEM) the signature must verify with.")
@progress_option
@json_option
def verify_cmd(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
               pubkey: Path | None, as_json: bool) -> None:
    """Verify a package or tree: layout, digests, tags, schemas, signature.

    Without a key, an encrypted package fails with exit 4 and a message naming its cipher
    and key slots; ``--pubkey`` alone checks its signature over every byte.
    """
    key = api.load_public_key(pubkey) if pubkey else None
    keys = opener(passphrase_file, key_file, identity)
    input_ref = file_ref_soon(package) if as_json and package.is_file() else lambda: file_ref(package)
    with byte_progress("verifying", lambda: api.package_bytes(package)) as progress:
        report = api.verify(package, opener=keys, pubkey=key,
                            progress=progress)
    if as_json:
        emit(report.to_json(), input=input_ref(), drop=("path",))
        return
    out = Printer()
    out.status("OK", f"{report.path}: {count(report.entries, 'file')}, {human_size(report.bytes)}")
    out.line(f"checked: {', '.join(report.checks)}")
    if report.signature == "unchecked":
        out.status("signed", f"by {report.signer}, signature not checked (pass --pubkey to check it)", "yellow")
    elif report.signature == "verified":
        out.status("signature verified", f"(signer {report.signer})")
    if report.encrypted and not report.decrypted:
        out.status("content not decrypted", "(no key given): the signature covers every byte of the file, so it is "
                   "exactly what the signer made; give a key to check the plaintext digests too", "yellow")


@click.command("inspect")
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--tensors", is_flag=True, help="List every tensor (name, dtype, shape, bytes).")
@json_option
def inspect_cmd(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
                tensors: bool, as_json: bool) -> None:
    """Show a package's headers, entries, metadata and tensors.

    An encrypted package inspected without a key shows what its clear header says:
    version, flags, cipher, key-slot kinds and signer.
    """
    doc = api.inspect(package, opener=opener(passphrase_file, key_file, identity), tensors=tensors).to_json()
    if as_json:
        emit(doc, input=file_ref(package), drop=("path", "file_size"))
        return
    from ptmpack.cli.inspect_view import render_inspect

    render_inspect(doc, Printer())


@click.command("keygen")
@click.option("--type", "kind", required=True, type=click.Choice(["symmetric", "x25519", "ed25519"]))
@click.option("-o", "--output", "prefix", required=True, type=click.Path(path_type=Path),
              help="Writes PREFIX.key (and PREFIX.pub).")
@json_option
def keygen_cmd(kind: str, prefix: Path, as_json: bool) -> None:
    """Make a key: symmetric key file, X25519 recipient pair, or Ed25519 signing pair."""
    paths = api.keygen(kind, prefix)
    if as_json:
        emit({"type": kind, "files": [str(p) for p in paths]})
        return
    out = Printer()
    for path in paths:
        out.status("wrote", str(path))
