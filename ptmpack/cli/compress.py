"""``ptmpack compress``: quantize, fold norms, prune, merge adapters (SPEC §6, §7)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ptmpack import api
from ptmpack.api import CompressSpec, compress
from ptmpack.cli._common import console, emit_json, pack_config, protection_options

_METHODS = ("rtn", "gptq", "affine", "ptq")


@contextmanager
def _layer_bars(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A ``(label, done, total)`` callback drawing one rich bar per step label on a terminal's stderr."""
    if not enabled or not sys.stderr.isatty():
        yield lambda label, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"{label} layers", total=total)
            bar.update(tasks[label], completed=done, total=total)

        yield update


@click.command("compress")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@click.option("--quant", type=click.Choice(_METHODS), help="Weight quantization method.")
@click.option("--bits", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True, help="Weight bits.")
@click.option("--act-bits", type=int, help="Activation bits (--quant ptq).")
@click.option("--group-size", type=int, help="Input columns per scale; must divide every layer's input width "
                                             "(default: the largest of 128, 64, 32 that does; 0: per output channel).")
@click.option("--sym/--asym", "symmetric", default=False, show_default=True, help="Symmetric or asymmetric (zero point).")
@click.option("--act-order/--no-act-order", default=None,
              help="GPTQ: visit columns by decreasing Hessian diagonal, static groups (default: on for gptq).")
@click.option("--gptq-order", type=click.Choice(["layer", "linear"]), default="layer", show_default=True,
              help="GPTQ: calibrate a layer's linears on its float weights (layer, as llm-compressor) "
                   "or each on the quantized earlier ones (linear).")
@click.option("--calib", type=click.Path(path_type=Path, dir_okay=False), help="Calibration text file.")
@click.option("--nsamples", type=int, help=f"Calibration windows ({CompressSpec.defaults_help('nsamples')}).")
@click.option("--seqlen", type=int, help=f"Tokens per calibration window ({CompressSpec.defaults_help('seqlen')}).")
@click.option("--calib-seed", type=int, help="Draw windows at random with this seed (default: the first N windows).")
@click.option("--epochs", type=int, help=f"Reconstruction epochs, affine and ptq ({CompressSpec.defaults_help('epochs')}).")
@click.option("--fold-norm", type=click.Choice(["affine", "unified"]), help="Fold normalization layers.")
@click.option("--prune", type=click.Choice(["heads", "ffn", "both"]), help="Structured pruning target.")
@click.option("--flops-budget", type=float, help="Fraction of the original FLOPs to keep (with --prune).")
@click.option("--prune-method", type=click.Choice(["structure", "magnitude"]), default="structure", show_default=True)
@click.option("--merge-lora", type=click.Path(path_type=Path, file_okay=False), help="PEFT LoRA adapter directory to merge.")
@click.option("--merge-adapter", is_flag=True, help="Re-parameterize the package's adapters into the base weights.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--compress", "codec", default="none", show_default=True, help="Output codec: none, zstd or zstd:LEVEL.")
@click.option("--chunk-size", default="4M", show_default=True, help="Chunk size for compressed/encrypted entries.")
@protection_options
@click.option("--in-passphrase-file", type=click.Path(path_type=Path), help="Passphrase file opening an encrypted input.")
@click.option("--in-key-file", type=click.Path(path_type=Path), help="Symmetric key file opening an encrypted input.")
@click.option("--identity", type=click.Path(path_type=Path), help="X25519 private key (PEM) opening an encrypted input.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def compress_cmd(source: Path, output: Path, quant: str | None, bits: str, act_bits: int | None,
                 group_size: int | None, symmetric: bool, act_order: bool | None, gptq_order: str, calib: Path | None, nsamples: int | None,
                 seqlen: int | None, calib_seed: int | None, epochs: int | None, fold_norm: str | None, prune: str | None,
                 flops_budget: float | None, prune_method: str, merge_lora: Path | None, merge_adapter: bool,
                 device: str, codec: str, chunk_size: str, in_passphrase_file: Path | None, in_key_file: Path | None,
                 identity: Path | None, force: bool, as_json: bool, **protection: Any) -> None:
    """Compress a model (chapter 7): quantize, fold norms, prune, merge adapters."""
    spec = CompressSpec(quant=quant, bits=int(bits), act_bits=act_bits, group_size=group_size, symmetric=symmetric,
                        calib=calib, nsamples=nsamples, seqlen=seqlen, calib_seed=calib_seed, epochs=epochs,
                        device=device, fold_norm=fold_norm, prune=prune, flops_budget=flops_budget,
                        prune_method=prune_method, merge_lora=merge_lora, merge_adapter=merge_adapter,
                        act_order=act_order, gptq_order=gptq_order).check()
    config = pack_config(compress=codec, chunk_size=chunk_size, **protection)
    keys = api.load_opener(api.KeyFiles(in_passphrase_file, in_key_file, identity))
    with _layer_bars(not as_json) as progress:
        report = compress(source, output, spec, config, opener=keys, force=force, progress=progress)
    if as_json:
        emit_json(report.to_json())
        return
    con = console()
    for step in report.steps:
        quality = step.get("quality") or {}
        what = step.get("method") or step.get("step")
        detail = f" W{step['bits']} g{step['group_size']}" if "bits" in step and "group_size" in step else ""
        q = ""
        if quality.get("before") is not None and quality.get("after") is not None:
            q = f", {quality.get('metric')} {quality['before']:.4g} -> {quality['after']:.4g}"
        con.print(f"[green]{step.get('step')}[/] {what}{detail}{q}")
    con.print(f"[green]compressed[/] {output}: {report.size_in:,} -> {report.size_out:,} bytes "
              f"({report.ratio:.3f}x) in {report.seconds:.1f}s")
