"""Protection of packages (SPEC §4): encryption, key slots, signatures and key files.

* :mod:`ptmpack.crypto.aead`: cipher ids, the chunk nonce and AAD construction, ``Sealer``.
* :mod:`ptmpack.crypto.keyslots`: wrapping the data key per passphrase, key file or recipient.
* :mod:`ptmpack.crypto.signing`: Ed25519 signatures over the manifest digest.
* :mod:`ptmpack.crypto.keyfiles`: ``keygen`` and the loaders behind the CLI's key options.

Every primitive comes from the ``cryptography`` package; byte layouts are in ``docs/CRYPTO.md``.
"""
