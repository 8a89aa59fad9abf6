"""meshd's work on its host, outside the data path: rules, /etc/hosts, systemd, memory.

``interception`` applies the iptables rules that ``meshd.rules`` renders,
``hostnames`` writes the managed ``/etc/hosts`` block, ``systemd`` speaks
the notify protocol, ``reloading`` is ``meshd reload``, ``allocator`` tunes
glibc malloc for the relay. These run as root from their own units, or once
at start; none of them is on the per-connection path.
"""
