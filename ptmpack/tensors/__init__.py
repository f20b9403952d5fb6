"""Tensor files: safetensors header indexing and dtype mapping."""
