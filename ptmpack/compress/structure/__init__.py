"""Steps that change a model's structure: norm folding, adapter merges, pruning."""
