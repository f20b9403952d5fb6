"""The storage engine: open, pack, unpack, verify and inspect packages; every other engine calls it.

``open_package`` reads a ``.ptm`` or a tree; ``pack_tree`` writes one; protection and the
chunk pipeline wire the crypto and codec leaves into the format.
"""
