"""The compress engine: quantization, pruning, folding and merging steps on a package tree (SPEC §7).

:func:`ptmpack.compress.pipeline.compress` composes the steps a
:class:`~ptmpack.compress.spec.CompressSpec` asks for; each step is a module with
``apply(tree, ctx) -> dict`` imported only when it runs. docs/COMPRESSION.md explains
the methods, the compressed-tensors storage layout and the options.
"""
