"""Commands for residual updates: diff (residual deltas) and apply."""

from __future__ import annotations

from pathlib import Path

import click

from ptmpack import api
from ptmpack.cli._common import json_option, opener, opener_options
from ptmpack.cli.output import Printer, count, emit, file_ref, human_size
from ptmpack.cli.progress import byte_progress, progress_option
from ptmpack.errors import UsageError


@click.command("diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The delta .ptm to write.")
@click.option("--residual", is_flag=True, hidden=True,
              help="Write a residual delta (the only kind of diff; accepted for older scripts).")
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
@progress_option
@json_option
def diff_cmd(base: Path, target: Path, output: Path, residual: bool, bits: str, max_error: float | None,
             group_size: int, level: int, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
             encrypt: bool, recipients: tuple[Path, ...], sign_key: Path | None, force: bool, as_json: bool) -> None:
    """Write the residual delta that turns BASE (.ptm) into TARGET (.ptm or tree)."""
    if recipients and not encrypt:
        raise UsageError("--recipient given without --encrypt", hint="add --encrypt")
    encryption = None
    if encrypt:
        encryption = api.load_encryption(api.RecipientFiles(
            passphrase_files=(passphrase_file,) if passphrase_file else (),
            key_files=(key_file,) if key_file else (), recipients=recipients))
    compression, level = api.parse_compression(f"zstd:{level}")
    config = api.PackConfig(compression=compression, level=level, encryption=encryption,
                            sign_key=api.load_signing_key(sign_key) if sign_key else None)
    with byte_progress("diffing", lambda: api.tree_bytes(target)) as progress:
        report = api.diff(base, target, output, bits=bits if bits == "auto" else int(bits), group_size=group_size,
                          max_error=max_error, opener=opener(passphrase_file, key_file, identity), force=force,
                          config=config, progress=progress)
    doc = report.to_json()
    if as_json:
        emit(doc, input={"base": file_ref(base), "target": file_ref(target)}, output=file_ref(output),
             drop=("delta_bytes",))
        return
    out = Printer()
    out.status("wrote", f"{output}: {human_size(report.delta_bytes)} = {report.ratio:.1%} of the target's "
                        f"{human_size(report.target_bytes)} ({report.seconds:.1f} s)")
    modes = ", ".join(f"{n} {m}" for m, n in doc["modes"].items() if n)
    bits_used = ", ".join(f"{n} at {b} bits" for b, n in doc["bits"].items())
    out.line(f"tensors: {modes or 'none'}" + (f" ({bits_used})" if bits_used else ""))
    out.line(f"files: {', '.join(f'{n} {m}' for m, n in doc['files'].items() if n)}; "
             f"worst relative error {doc['max_rel_fro']:.3%}" + (" (lossless)" if report.lossless else ""))


@click.command("apply")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("delta", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The rebuilt .ptm to write.")
@opener_options
@click.option("--compress", default=None, help="none, zstd or zstd:LEVEL (default: as the base).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) to sign the output with.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@progress_option
@json_option
def apply_cmd(base: Path, delta: Path, output: Path, passphrase_file: Path | None, key_file: Path | None,
              identity: Path | None, compress: str | None, sign_key: Path | None, force: bool, as_json: bool) -> None:
    """Rebuild the target of DELTA on BASE into a normal package (refuses another base: exit 7)."""
    config = None
    if compress is not None or sign_key is not None:
        compression, level = api.parse_compression(compress or "zstd")
        config = api.PackConfig(compression=compression, level=level,
                                sign_key=api.load_signing_key(sign_key) if sign_key else None)
    with byte_progress("applying", None) as progress:
        report = api.apply(base, delta, output, opener=opener(passphrase_file, key_file, identity), force=force,
                           config=config, progress=progress)
    doc = report.to_json()
    if as_json:
        emit(doc, input={"base": file_ref(base), "delta": file_ref(delta)}, output=file_ref(output),
             drop=("package_bytes",))
        return
    out = Printer()
    out.status("rebuilt", f"{output}: {human_size(report.bytes)} in {count(sum(report.files.values()), 'file')} "
                          f"({report.seconds:.1f} s)")
    out.line(f"tensors: {', '.join(f'{n} {m}' for m, n in doc['modes'].items() if n) or 'none'}; "
             + ("bit-exact to the target" if report.lossless else f"worst relative error {doc['max_rel_fro']:.3%}"))
    out.line(f"checked: {', '.join(report.checks)}")
