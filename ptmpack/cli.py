"""The ``ptmpack`` command line: parse options, call :mod:`ptmpack.api`, render results.

All errors pass through :func:`main`, the one place that maps a PtmError to its
exit code and a one-line message (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ptmpack import __version__, api
from ptmpack.container import spec
from ptmpack.crypto import keyfiles
from ptmpack.crypto.keyslots import Opener
from ptmpack.errors import PtmError, UsageError
from ptmpack.protect import CIPHER_NAMES, EncryptionSpec

_SIZE = re.compile(r"^(\d+)([kKmMgG]?)(i?[bB])?$")


def _console() -> Console:
    """Human output: stdout on a terminal, else stderr so stdout stays clean for pipes."""
    return Console(stderr=not sys.stdout.isatty())


def _parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"cannot read size {text!r}", hint="use e.g. 4M, 512K or 1048576")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def _parse_compress(text: str) -> tuple[spec.Compression, int]:
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return spec.Compression.NONE, 3
    if name == "zstd":
        try:
            return spec.Compression.ZSTD, int(level) if level else 3
        except ValueError:
            raise UsageError(f"bad zstd level {level!r}") from None
    raise UsageError(f"unknown compression {text!r}", hint="use none, zstd or zstd:LEVEL")


def opener_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that open an encrypted package, shared by every reading command."""
    f = click.option("--identity", type=click.Path(path_type=Path), help="X25519 private key (PEM) of a recipient.")(f)
    f = click.option("--key-file", type=click.Path(path_type=Path),
                     help="Symmetric key file (base64). Env: PTMPACK_KEY_FILE.")(f)
    return click.option("--passphrase-file", type=click.Path(path_type=Path),
                        help="File holding the passphrase. Env: PTMPACK_PASSPHRASE.")(f)


def _opener(passphrase_file: Path | None, key_file: Path | None, identity: Path | None) -> Opener | None:
    passphrase = keyfiles.load_passphrase(passphrase_file) if passphrase_file else keyfiles.passphrase_from_env()
    key_path = key_file or keyfiles.key_file_from_env()
    kek = keyfiles.load_symmetric_key(key_path) if key_path else None
    ident = keyfiles.load_x25519_private(identity) if identity else None
    if passphrase is None and kek is None and ident is None:
        return None
    return Opener(passphrase=passphrase, kek=kek, identity=ident)


@contextmanager
def _progress(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    cols = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(f"[bold]{label}", *cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptmpack")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Package large pre-trained models in the GB/T 42382.2 container."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--from-hf", type=click.Path(path_type=Path), help="Hugging Face checkpoint directory to import.")
@click.option("--from-gguf", type=click.Path(path_type=Path), help="GGUF file (LLaMA architecture) to import.")
@click.option("--gguf-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Dtype of the weights dequantized from GGUF.")
@click.option("--name", help="Model name for managementinfo.json.")
def init(directory: Path, from_hf: Path | None, from_gguf: Path | None, gguf_dtype: str, name: str | None) -> None:
    """Lay out a package tree (Model/, Program/, Meta-info/) with metadata."""
    if from_hf is not None and from_gguf is not None:
        raise UsageError("give --from-hf or --from-gguf, not both")
    if from_gguf is not None:
        from ptmpack.ir.convert_gguf import init_tree_from_gguf

        written = init_tree_from_gguf(directory, from_gguf, name=name, dtype=gguf_dtype)
    else:
        from ptmpack.hf import init_tree

        written = init_tree(directory, from_hf=from_hf, name=name)
    _console().print(f"[green]initialised[/] {directory} ({len(written)} files)")


@cli.command("pack")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@click.option("--compress", default="none", show_default=True, help="none, zstd or zstd:LEVEL.")
@click.option("--chunk-size", default="4M", show_default=True, help="Chunk size for compressed/encrypted entries.")
@click.option("--encrypt", is_flag=True, help="Encrypt the package (needs a passphrase, key file or recipient).")
@click.option("--passphrase-file", "passphrase_files", multiple=True, type=click.Path(path_type=Path))
@click.option("--key-file", "key_files", multiple=True, type=click.Path(path_type=Path))
@click.option("--recipient", "recipients", multiple=True, type=click.Path(path_type=Path),
              help="X25519 public key (PEM) of a device that may open the package; repeatable.")
@click.option("--cipher", type=click.Choice(sorted(CIPHER_NAMES)), default="aes-256-gcm", show_default=True)
@click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign with.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def pack_cmd(directory: Path, output: Path, compress: str, chunk_size: str, encrypt: bool,
             passphrase_files: tuple[Path, ...], key_files: tuple[Path, ...], recipients: tuple[Path, ...],
             cipher: str, sign_key: Path | None, force: bool, as_json: bool) -> None:
    """Pack a package tree into a .ptm container."""
    compression, level = _parse_compress(compress)
    encryption = None
    if encrypt:
        passphrases = [keyfiles.load_passphrase(p) for p in passphrase_files]
        if not passphrases and not key_files and not recipients and (env := keyfiles.passphrase_from_env()):
            passphrases.append(env)
        encryption = EncryptionSpec(
            cipher=CIPHER_NAMES[cipher],
            passphrases=tuple(passphrases),
            keks=tuple(keyfiles.load_symmetric_key(k) for k in key_files),
            recipients=tuple(keyfiles.load_x25519_public(r) for r in recipients),
        )
    elif passphrase_files or key_files or recipients:
        raise UsageError("key options given without --encrypt", hint="add --encrypt")
    config = api.PackConfig(
        compression=compression, level=level, chunk_size=_parse_size(chunk_size), encryption=encryption,
        sign_key=keyfiles.load_ed25519_private(sign_key) if sign_key else None,
    )
    total = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file() and not p.is_symlink()) \
        if Path(directory).is_dir() else 0
    with _progress("packing", total, not as_json) as progress:
        manifest = api.pack(directory, output, config, force=force, progress=progress)
    raw = sum(e.raw_length for e in manifest.entries)
    size = output.stat().st_size
    if as_json:
        _emit_json({"output": str(output), "package_id": manifest.package_id.hex(), "entries": len(manifest.entries),
                    "raw_bytes": raw, "file_bytes": size, "flags": [f.name for f in spec.Flags if manifest.flags & f]})
        return
    _console().print(f"[green]packed[/] {output}: {len(manifest.entries)} files, {raw:,} bytes -> {size:,} bytes")


@cli.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Directory to create.")
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM): refuse the package unless it carries a valid signature by it.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def unpack(package: Path, output: Path, passphrase_file: Path | None, key_file: Path | None,
           identity: Path | None, pubkey: Path | None, force: bool) -> None:
    """Unpack a .ptm container into a package tree (atomically)."""
    opener = _opener(passphrase_file, key_file, identity)
    key = keyfiles.load_ed25519_public(pubkey) if pubkey else None
    size = package.stat().st_size if package.is_file() else 0
    with _progress("unpacking", size, True) as progress:
        result = api.unpack(package, output, opener=opener, pubkey=key, force=force, progress=progress)
    _console().print(f"[green]unpacked[/] {result.files} files, {result.bytes:,} bytes into {result.target}")


@cli.command()
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--pubkey", type=click.Path(path_type=Path), help="Ed25519 public key (PEM) the signature must verify with.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
           pubkey: Path | None, as_json: bool) -> None:
    """Verify a package or tree: layout, digests, tags, schemas, signature."""
    opener = _opener(passphrase_file, key_file, identity)
    key = keyfiles.load_ed25519_public(pubkey) if pubkey else None
    size = package.stat().st_size if package.is_file() else 0
    with _progress("verifying", size, not as_json) as progress:
        report = api.verify(package, opener=opener, pubkey=key, progress=progress)
    if as_json:
        _emit_json(report.to_json())
        return
    con = _console()
    con.print(f"[green]OK[/] {report.path}: {report.entries} files, {report.bytes:,} bytes")
    con.print(f"checked: {', '.join(report.checks)}")
    if report.signature == "unchecked":
        con.print(f"[yellow]signed by {report.signer}, signature not checked[/] (pass --pubkey to check it)")
    elif report.signature == "verified":
        con.print(f"[green]signature verified[/] (signer {report.signer})")
    if not report.decrypted:
        con.print("[yellow]content not decrypted[/] (no key given): the signature covers every byte of the "
                  "file, so it is exactly what the signer made; give a key to check the plaintext digests too")


@cli.command()
@click.argument("package", type=click.Path(path_type=Path))
@opener_options
@click.option("--tensors", is_flag=True, help="List every tensor (name, dtype, shape, bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect(package: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
            tensors: bool, as_json: bool) -> None:
    """Show a package's headers, entries, metadata and tensors."""
    doc = api.inspect(package, opener=_opener(passphrase_file, key_file, identity), tensors=tensors)
    if as_json:
        _emit_json(doc)
        return
    _render_inspect(doc, _console())


def _render_inspect(doc: dict[str, Any], con: Console) -> None:
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


@cli.command()
@click.option("--type", "kind", required=True, type=click.Choice(["symmetric", "x25519", "ed25519"]))
@click.option("-o", "--output", "prefix", required=True, type=click.Path(path_type=Path), help="Writes PREFIX.key (and PREFIX.pub).")
def keygen(kind: str, prefix: Path) -> None:
    """Make a key: symmetric key file, X25519 recipient pair, or Ed25519 signing pair."""
    for path in keyfiles.keygen(kind, prefix):
        _console().print(f"wrote {path}")


@cli.command("diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The delta .ptm to write.")
@click.option("--residual", is_flag=True, help="Write a residual delta (the only kind of diff; required).")
@click.option("--bits", type=click.Choice(["8", "4", "2", "0", "auto"]), default="8", show_default=True,
              help="Bits per delta element; 0 is lossless; auto picks the smallest within --max-error.")
@click.option("--max-error", type=float, help="Largest relative error ||Q(d)-d||/||d|| a tensor may have.")
@click.option("--group-size", type=int, default=128, show_default=True, help="Elements per quantization scale.")
@click.option("--level", type=int, default=3, show_default=True, help="zstd level of the delta package.")
@opener_options
@click.option("--encrypt", is_flag=True, help="Encrypt the delta to the given passphrase/key file and --recipient.")
@click.option("--recipient", "recipients", multiple=True, type=click.Path(path_type=Path),
              help="X25519 public key (PEM) that may open the delta; repeatable.")
@click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign the delta with.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def diff_cmd(base: Path, target: Path, output: Path, residual: bool, bits: str, max_error: float | None,
             group_size: int, level: int, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
             encrypt: bool, recipients: tuple[Path, ...], sign_key: Path | None, force: bool, as_json: bool) -> None:
    """Write the residual delta that turns BASE (.ptm) into TARGET (.ptm or tree)."""
    from ptmpack.residual import diff_residual

    if not residual:
        raise UsageError("diff writes residual deltas only", hint="pass --residual")
    opener = _opener(passphrase_file, key_file, identity)
    encryption = None
    if encrypt:
        encryption = EncryptionSpec(
            passphrases=(opener.passphrase,) if opener and opener.passphrase else (),
            keks=(opener.kek,) if opener and opener.kek else (),
            recipients=tuple(keyfiles.load_x25519_public(r) for r in recipients))
    elif recipients:
        raise UsageError("--recipient given without --encrypt", hint="add --encrypt")
    config = api.PackConfig(compression=spec.Compression.ZSTD, level=level, encryption=encryption,
                            sign_key=keyfiles.load_ed25519_private(sign_key) if sign_key else None)
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() else None
    with _progress("diffing", total, not as_json) as progress:  # type: ignore[arg-type]
        report = diff_residual(base, target, output, bits=bits if bits == "auto" else int(bits), group_size=group_size,
                               max_error=max_error, opener=opener, force=force, config=config, progress=progress)
    doc = report.to_json()
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    con.print(f"[green]wrote[/] {output}: {report.delta_bytes:,} bytes = {report.ratio:.1%} of the target's "
              f"{report.target_bytes:,} bytes ({report.seconds:.1f} s)")
    modes = ", ".join(f"{n} {m}" for m, n in doc["modes"].items() if n)
    bits_used = ", ".join(f"{n} at {b} bits" for b, n in doc["bits"].items())
    con.print(f"tensors: {modes or 'none'}" + (f" ({bits_used})" if bits_used else ""))
    con.print(f"files: {', '.join(f'{n} {m}' for m, n in doc['files'].items() if n)}; "
              f"worst relative error {doc['max_rel_fro']:.3%}" + (" (lossless)" if report.lossless else ""))


@cli.command("apply")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("delta", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The rebuilt .ptm to write.")
@opener_options
@click.option("--compress", default=None, help="none, zstd or zstd:LEVEL (default: as the base).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign the output with.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def apply_cmd(base: Path, delta: Path, output: Path, passphrase_file: Path | None, key_file: Path | None,
              identity: Path | None, compress: str | None, sign_key: Path | None, force: bool, as_json: bool) -> None:
    """Rebuild the target of DELTA on BASE into a normal package (refuses another base: exit 7)."""
    from ptmpack.residual import apply_residual

    config = None
    if compress is not None or sign_key is not None:
        compression, level = _parse_compress(compress or "zstd")
        config = api.PackConfig(compression=compression, level=level,
                                sign_key=keyfiles.load_ed25519_private(sign_key) if sign_key else None)
    with _progress("applying", None, not as_json) as progress:  # type: ignore[arg-type]
        report = apply_residual(base, delta, output, opener=_opener(passphrase_file, key_file, identity),
                                force=force, config=config, progress=progress)
    if as_json:
        _emit_json(report.to_json())
        return
    doc = report.to_json()
    con = _console()
    con.print(f"[green]rebuilt[/] {output}: {report.bytes:,} bytes in {sum(report.files.values())} files "
              f"({report.seconds:.1f} s)")
    con.print(f"tensors: {', '.join(f'{n} {m}' for m, n in doc['modes'].items() if n) or 'none'}; "
              + ("bit-exact to the target" if report.lossless else f"worst relative error {doc['max_rel_fro']:.3%}"))
    con.print(f"checked: {', '.join(report.checks)}")


@cli.group()
def graph() -> None:
    """Check and show the chapter-6 IR (Model/graph.json) of a package."""


@graph.command("check")
@click.argument("source", type=click.Path(path_type=Path))
@opener_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def graph_check(source: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
                as_json: bool) -> None:
    """Validate the IR of a package, tree or bare graph.json (exit 5 names the node and reason)."""
    from ptmpack.ir.check import check_model_file

    report = check_model_file(source, opener=_opener(passphrase_file, key_file, identity))
    doc = {"ok": True, "source": report.source, "model": report.model.name, "graphs": report.graphs,
           "operators": report.operators, "variables": report.variables, "parameters": report.parameters,
           "tensors_checked": report.tensors_checked, "warnings": list(report.warnings)}
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    con.print(f"[green]OK[/] {report.model.name}: {report.graphs} graphs, {report.operators} operators, "
              f"{report.variables} variables, {report.tensors_checked} parameters matched to tensors")
    for w in report.warnings:
        con.print(f"[yellow]warning[/] {w}")


@graph.command("show")
@click.argument("source", type=click.Path(path_type=Path))
@opener_options
def graph_show(source: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None) -> None:
    """Draw the model structure: graphs, operators with their slots, variables."""
    from ptmpack.ir.check import load_model
    from ptmpack.ir.show import show_model

    model, package = load_model(source, _opener(passphrase_file, key_file, identity))
    try:
        Console().print(show_model(model))
    finally:
        if package is not None:
            package.close()


@cli.command("run")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--text", help="Text to tokenize with the package's tokenizer.")
@click.option("--tokens", help="Token ids instead of text, e.g. 1,2,3.")
@click.option("--top-k", default=5, show_default=True, help="Logits: how many top next tokens to show.")
@click.option("--dtype", "compute_dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Compute dtype of the reference executor.")
@opener_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def run_cmd(package: Path, text: str | None, tokens: str | None, top_k: int, compute_dtype: str,
            passphrase_file: Path | None, key_file: Path | None, identity: Path | None, as_json: bool) -> None:
    """Run a packaged model on one input: next-token top-k (decoders) or the sentence embedding (encoders)."""
    from ptmpack.ir.runner import LoadedModel, parse_token_list, run_model

    if (text is None) == (tokens is None):
        raise UsageError("give exactly one of --text or --tokens")
    ids = parse_token_list(tokens) if tokens is not None else None
    with LoadedModel.open(package, opener=_opener(passphrase_file, key_file, identity),
                          compute_dtype=compute_dtype) as lm:
        result = run_model(lm, text=text, tokens=ids, top_k=top_k)
    doc = result.to_json()
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    con.print(f"{len(doc['tokens'])} tokens in {doc['seconds']} s")
    if doc["kind"] == "logits":
        t = Table(title="next token")
        for col in ("id", "token", "logit", "prob"):
            t.add_column(col)
        for row in doc["top"]:
            t.add_row(str(row["id"]), repr(row["token"]), f"{row['logit']:.4f}", f"{row['prob']:.4f}")
        con.print(t)
    else:
        emb = doc["embedding"]
        con.print(f"embedding ({len(emb)} dims): [{', '.join(f'{v:.4f}' for v in emb[:8])}, ...]")


@cli.command("eval")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--perplexity", "perplexity_file", type=click.Path(path_type=Path), help="Text file: decoder perplexity.")
@click.option("--embeddings", "embeddings_file", type=click.Path(path_type=Path), help="Text file, one sentence a line: encoder embeddings.")
@click.option("--max-tokens", type=int, help="Score at most this many tokens.")
@click.option("--dtype", "compute_dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@opener_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def eval_cmd(package: Path, perplexity_file: Path | None, embeddings_file: Path | None, max_tokens: int | None,
             compute_dtype: str, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
             as_json: bool) -> None:
    """Evaluate a packaged model: perplexity of a decoder, or embeddings of an encoder."""
    from ptmpack.ir.runner import LoadedModel, eval_embeddings, perplexity, read_text

    if (perplexity_file is None) == (embeddings_file is None):
        raise UsageError("give exactly one of --perplexity or --embeddings")
    with LoadedModel.open(package, opener=_opener(passphrase_file, key_file, identity),
                          compute_dtype=compute_dtype) as lm:
        if perplexity_file is not None:
            doc = perplexity(lm, read_text(perplexity_file), max_tokens=max_tokens).to_json()
        else:
            assert embeddings_file is not None
            doc = eval_embeddings(lm, read_text(embeddings_file)).to_json()
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    for key, value in doc.items():
        con.print(f"{key}: {value}")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn errors into exit codes (SPEC §6)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # A stop signal unwinds like an interrupt, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=args, prog_name="ptmpack", standalone_mode=False)
    except PtmError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"ptmpack: error: {exc.diagnostics()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ptmpack: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except OSError as exc:
        if debug:
            raise
        click.echo(f"ptmpack: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"ptmpack: unexpected error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
