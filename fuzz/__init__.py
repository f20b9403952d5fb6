"""Reader fuzzing: shared targets (targets.py) and the long-running harness (fuzz_reader.py)."""
