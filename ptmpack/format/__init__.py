"""The chapter-8 container: byte layouts, tree rules, the streaming writer and the reader.

This package moves bytes and uses only the standard library; chunk codecs and
ciphers are handed in by the caller (``ptmpack.storage.pipeline``).
"""
