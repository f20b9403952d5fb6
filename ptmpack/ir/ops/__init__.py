"""Operator definitions, one module per group of the standard's tables (see registry.OP_MODULES)."""
