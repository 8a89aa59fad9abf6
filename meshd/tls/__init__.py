"""TLS as every meshd port speaks it: contexts, accepting handshakes, reading the peer's leaf.

``context`` builds the mutual TLS 1.3 contexts (shared with meshctl's admin
client), ``gate`` bounds handshakes from peers not yet authenticated,
``handshake`` reads a whole ClientHello before spending on a peer and runs
the handshake itself so every failure is seen, ``failures`` names why one
failed (the vocabulary of every port, and ``classify``), ``der`` reads the
two leaf extensions that Python's ``getpeercert`` leaves out.
"""
