"""Operators of this group register here (being written)."""
