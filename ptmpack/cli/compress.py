"""``ptmpack compress``: quantize, fold norms, prune, merge adapters (SPEC §6, §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ptmpack.api import CompressSpec, StepRecord, compress, compress_choices
from ptmpack.cli._common import (
    aliased,
    deprecated_alias,
    derived_output_config,
    json_option,
    opener,
    opener_options,
    output_protection_options,
)
from ptmpack.cli.output import Printer, emit, file_ref, human_size
from ptmpack.cli.progress import progress_option, step_progress


@click.command("compress")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .ptm file to write.")
@click.option("--quant", type=click.Choice(compress_choices("quant")), help="Weight quantization method.")
@click.option("--bits", type=click.Choice(compress_choices("bits")), default="4", show_default=True, help="Weight bits.")
@click.option("--act-bits", type=int, help="Activation bits (--quant ptq).")
@click.option("--group-size", type=int, help="Input columns per scale; must divide every layer's input width "
                                             "(default: the largest of 128, 64, 32 that does; 0: per output channel).")
@click.option("--sym/--asym", "symmetric", default=True, show_default=True,
              help="Symmetric (loads in transformers + compressed-tensors) or asymmetric with zero points "
                   "(smaller error; loads after unpack --dequantize).")
@click.option("--act-order/--no-act-order", default=None,
              help="GPTQ: visit columns by decreasing Hessian diagonal, static groups (default: on for gptq).")
@click.option("--gptq-order", type=click.Choice(compress_choices("gptq-order")), default="layer", show_default=True,
              help="GPTQ: calibrate a layer's linears on its float weights (layer, as llm-compressor) "
                   "or each on the quantized earlier ones (linear).")
@click.option("--calib", type=click.Path(path_type=Path, dir_okay=False), help="Calibration text file.")
@click.option("--nsamples", type=int, help=f"Calibration windows ({CompressSpec.defaults_help('nsamples')}).")
@click.option("--seqlen", type=int, help=f"Tokens per calibration window ({CompressSpec.defaults_help('seqlen')}).")
@click.option("--calib-seed", type=int, help="Draw windows at random with this seed (default: the first N windows).")
@click.option("--epochs", type=int, help=f"Reconstruction epochs, affine and ptq ({CompressSpec.defaults_help('epochs')}).")
@click.option("--fold-norm", type=click.Choice(compress_choices("fold-norm")), help="Fold normalization layers.")
@click.option("--prune", type=click.Choice(compress_choices("prune")), help="Structured pruning target.")
@click.option("--flops-budget", type=float, help="Fraction of the original FLOPs to keep (with --prune).")
@click.option("--prune-method", type=click.Choice(compress_choices("prune-method")), default="structure", show_default=True)
@click.option("--merge-lora", type=click.Path(path_type=Path, file_okay=False), help="PEFT LoRA adapter directory to merge.")
@click.option("--merge-adapter", is_flag=True, help="Re-parameterize the package's adapters into the base weights.")
@click.option("--device", type=click.Choice(compress_choices("device")), default="cpu", show_default=True)
@click.option("--compress", "codec", default=None, help="Output codec: none, zstd or zstd:LEVEL (default: the input's).")
@click.option("--chunk-size", default="4M", show_default=True, help="Chunk size for compressed/encrypted entries.")
@opener_options
@deprecated_alias("--in-passphrase-file", "--passphrase-file", "passphrase_file", type=click.Path(path_type=Path))
@deprecated_alias("--in-key-file", "--key-file", "key_file", type=click.Path(path_type=Path))
@output_protection_options
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@progress_option
@json_option
@click.pass_context
def compress_cmd(ctx: click.Context, source: Path, output: Path, quant: str | None, bits: str, act_bits: int | None,
                 group_size: int | None, symmetric: bool, act_order: bool | None, gptq_order: str, calib: Path | None,
                 nsamples: int | None, seqlen: int | None, calib_seed: int | None, epochs: int | None,
                 fold_norm: str | None, prune: str | None, flops_budget: float | None, prune_method: str,
                 merge_lora: Path | None, merge_adapter: bool, device: str, codec: str | None, chunk_size: str,
                 passphrase_file: Path | None, key_file: Path | None, identity: Path | None, force: bool,
                 as_json: bool, **protection: Any) -> None:
    """Compress a model (chapter 7): quantize, fold norms, prune, merge adapters."""
    spec = CompressSpec(quant=quant, bits=int(bits), act_bits=act_bits, group_size=group_size, symmetric=symmetric,
                        calib=calib, nsamples=nsamples, seqlen=seqlen, calib_seed=calib_seed, epochs=epochs,
                        device=device, fold_norm=fold_norm, prune=prune, flops_budget=flops_budget,
                        prune_method=prune_method, merge_lora=merge_lora, merge_adapter=merge_adapter,
                        act_order=act_order, gptq_order=gptq_order).check()
    keys = opener(aliased(ctx, "passphrase_file", passphrase_file), aliased(ctx, "key_file", key_file), identity)
    config = derived_output_config(source, keys, codec=codec, chunk_size=chunk_size, **protection)
    with step_progress() as progress:
        report = compress(source, output, spec, config, opener=keys, force=force, progress=progress)
    loads = _loads_with(report.steps)
    if as_json:
        emit({**report.to_json(), "encrypted": config.encryption is not None, "loads_with": loads},
             input=file_ref(source), output=file_ref(output), drop=("source", "target", "size_in", "size_out"))
        return
    out = Printer()
    for step in report.steps:
        scheme, quality = step.scheme, step.quality
        detail = ""
        if scheme is not None and scheme.group_size is not None:
            detail = f" W{scheme.bits} g{scheme.group_size}"
        if scheme is not None and scheme.symmetric is not None:
            detail += " sym" if scheme.symmetric else " asym"
        q = ""
        if quality is not None and quality.before is not None and quality.after is not None:
            q = f", {quality.metric} {quality.before:.4g} -> {quality.after:.4g}"
        out.status(step.step, f"{step.method}{detail}{q}")
    out.status("compressed", f"{output}: {human_size(report.size_in)} -> {human_size(report.size_out)} "
                             f"({report.ratio:.3f}x) in {report.seconds:.1f} s"
                             + (", encrypted like the input" if config.encryption is not None else ""))
    out.line(f"loads with: {loads}")


def _loads_with(steps: tuple[StepRecord, ...]) -> str:
    """What loads the compressed output, said at the end of every run (SPEC §7)."""
    quant = [s for s in steps if s.scheme is not None]
    if not quant:
        return "anything that loads the original format (float weights; unpack gives a Hugging Face checkpoint)"
    if any(s.method == "ptq" for s in quant):
        return ("ptmpack run/eval: activation quantization with channel compensation is an operator of "
                "Model/graph.json that transformers + compressed-tensors do not run")
    unmerged = sum(s.unmerged_transforms for s in quant)
    if unmerged:
        return (f"ptmpack run/eval, which execute the {unmerged} unmerged AffineQuant transforms of Model/graph.json; "
                "transformers + compressed-tensors load the weights but skip those transforms, so they compute a "
                "slightly different model")
    if any(s.scheme is not None and s.scheme.symmetric is False for s in quant):
        return ("ptmpack run/eval; the asymmetric pack-quantized weights do not load in released transformers + "
                "compressed-tensors (zero-point shape, llm-compressor #1618): `ptmpack unpack --dequantize` "
                "writes float weights any loader reads, or compress without --asym")
    return ("ptmpack run/eval; after `ptmpack unpack`, transformers with compressed-tensors installed "
            "(pip install compressed-tensors); `ptmpack unpack --dequantize` writes plain float weights")
