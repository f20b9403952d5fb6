"""Plumbing every compress step shares: the checkpoint's weight files, read and rewritten one tensor at a time."""
