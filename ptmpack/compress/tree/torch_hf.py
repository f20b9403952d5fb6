"""The Hugging Face model of a tree's ``Model/`` in transformers, for the steps that run the float model in PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptmpack.errors import UnsupportedError


def load_hf(model_dir: Path, family: str, *, purpose: str, hint: str | None = None) -> Any:
    """The transformers model of ``Model/`` (BertModel or AutoModelForCausalLM), float32, eval mode.

    ``purpose`` names the step in the messages ("structure-aware pruning"); ``hint`` is what to do instead.

    Raises:
        UnsupportedError: PyTorch or transformers is missing, or transformers cannot load the checkpoint.
    """
    try:
        import torch
        import transformers
    except ImportError:
        raise UnsupportedError(f"{purpose} needs PyTorch and transformers",
                               hint="pip install 'ptmpack[torch]' transformers") from None
    cls = transformers.BertModel if family == "bert" else transformers.AutoModelForCausalLM
    try:
        kwargs = {"add_pooling_layer": False} if family == "bert" else {}
        return cls.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise UnsupportedError(f"{model_dir}: transformers cannot load the checkpoint for {purpose} ({exc})",
                               hint=hint) from None
