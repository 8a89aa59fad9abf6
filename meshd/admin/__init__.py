"""The admin API: mutual TLS for operators on a TCP port, a unix socket for local checks.

``server`` decides who is calling and how much room each caller gets,
``http`` runs HTTP/1.1 on an admitted session, ``api`` answers a request
from the daemon's backend (no sockets), ``wire`` parses and frames HTTP
messages, ``rawstream`` reads an untrusted socket only as far as asked.
"""
