"""meshd's work on its host, outside the data path: rules, /etc/hosts, systemd, memory.

``interception`` applies the iptables rules that ``meshd.rules`` renders,
``hostnames`` writes the managed ``/etc/hosts`` block, ``registryfiles``
reads the registry files (the config's, the pushed one) and keeps the sync
note, ``systemd`` speaks the notify protocol, ``reloading`` is ``meshd
reload``, ``allocator`` tunes glibc malloc for the relay. These run as root
from their own units, or once at start (and on reload); none of them is on
the per-connection path.
"""
