"""Who may connect where: meshd's one decision seam, and the room the policy engine grows in.

``bundle`` compiles what the decisions need (registry, config limits and mTLS
mode today; the policy documents, routes and resilience settings later) into
one frozen, versioned value, indexed by destination, once per swap of the
running state. ``decide`` holds the pure admission functions both directions
of the proxy call at their admission points (an app's outbound connection, an
inbound link, a stream OPENed over it, plaintext from outside the mesh); they
return a typed decision from ``decisions``. Nothing here does I/O or reads a
clock: what a rule needs to count is passed in.
"""
