"""Commands over the chapter-6 IR: graph check/show, run, eval."""

from __future__ import annotations

from pathlib import Path

import click

from ptmpack import api
from ptmpack.cli._common import json_option, opener, opener_options
from ptmpack.cli.output import Printer, count, emit, file_ref, stdout_is_terminal


@click.group("graph")
def graph_cmd() -> None:
    """Check and show the chapter-6 IR (Model/graph.json) of a package."""


@graph_cmd.command("check")
@click.argument("source", type=click.Path(path_type=Path))
@opener_options
@json_option
def graph_check_cmd(source: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
                    as_json: bool) -> None:
    """Validate the IR of a package, tree or bare graph.json (exit 5 names the node and reason)."""
    report = api.graph_check(source, opener=opener(passphrase_file, key_file, identity))
    if as_json:
        emit(report.to_json(), input=file_ref(source), drop=("source",))
        return
    out = Printer()
    out.status("OK", f"{report.model.name}: {count(report.graphs, 'graph')}, {count(report.operators, 'operator')}, "
                     f"{count(report.variables, 'variable')}, {count(report.tensors_checked, 'parameter')} matched to tensors")
    for w in report.warnings:
        out.status("warning", w, "yellow")


@graph_cmd.command("show")
@click.argument("source", type=click.Path(path_type=Path))
@opener_options
def graph_show_cmd(source: Path, passphrase_file: Path | None, key_file: Path | None, identity: Path | None) -> None:
    """Draw the model structure: graphs, operators with their slots, variables.

    On a terminal a rich tree; elsewhere one node a line, indented two spaces per level.
    """
    from ptmpack.cli.graph_view import plain_lines, show_model

    tree = show_model(api.load_graph(source, opener=opener(passphrase_file, key_file, identity)))
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(tree)
        return
    for line in plain_lines(tree):
        click.echo(line)


@click.command("run")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--text", help="Text to tokenize with the package's tokenizer.")
@click.option("--tokens", help="Token ids instead of text, e.g. 1,2,3.")
@click.option("--top-k", default=5, show_default=True, help="Logits: how many top next tokens to show.")
@click.option("--dtype", "compute_dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Compute dtype of the reference executor.")
@opener_options
@json_option
def run_cmd(package: Path, text: str | None, tokens: str | None, top_k: int, compute_dtype: str,
            passphrase_file: Path | None, key_file: Path | None, identity: Path | None, as_json: bool) -> None:
    """Run a packaged model on one input: next-token top-k (decoders) or the sentence embedding (encoders)."""
    result = api.run(package, text=text, tokens=tokens, top_k=top_k, compute_dtype=compute_dtype,
                     opener=opener(passphrase_file, key_file, identity))
    doc = result.to_json()
    if as_json:
        emit(doc, input=file_ref(package), drop=("seconds",))
        return
    out = Printer()
    out.line(f"{count(len(doc['tokens']), 'token')} in {doc['seconds']} s")
    if doc["kind"] == "logits":
        out.table("next token", ("id", "token", "logit", "prob"),
                  [(row["id"], repr(row["token"]), f"{row['logit']:.4f}", f"{row['prob']:.4f}") for row in doc["top"]])
    else:
        emb = doc["embedding"]
        out.line(f"embedding ({len(emb)} dims, {doc.get('pooling', 'mean')} pooling): "
                 f"[{', '.join(f'{v:.4f}' for v in emb[:8])}, ...]")


@click.command("eval")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--perplexity", "perplexity_file", type=click.Path(path_type=Path), help="Text file: decoder perplexity.")
@click.option("--embeddings", "embeddings_file", type=click.Path(path_type=Path),
              help="Text file, one sentence a line: encoder embeddings.")
@click.option("--max-tokens", type=int, help="Score at most this many tokens.")
@click.option("--dtype", "compute_dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@opener_options
@json_option
def eval_cmd(package: Path, perplexity_file: Path | None, embeddings_file: Path | None, max_tokens: int | None,
             compute_dtype: str, passphrase_file: Path | None, key_file: Path | None, identity: Path | None,
             as_json: bool) -> None:
    """Evaluate a packaged model: perplexity of a decoder, or embeddings of an encoder."""
    result = api.evaluate(package, perplexity_file=perplexity_file, embeddings_file=embeddings_file,
                          max_tokens=max_tokens, compute_dtype=compute_dtype,
                          opener=opener(passphrase_file, key_file, identity))
    doc = result.to_json()
    if as_json:
        emit(doc, input=file_ref(package), drop=("seconds",))
        return
    Printer().fields("evaluation", [(key, value) for key, value in doc.items()])
