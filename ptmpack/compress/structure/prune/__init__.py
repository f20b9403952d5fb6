"""Structured pruning of attention heads and FFN neurons."""
