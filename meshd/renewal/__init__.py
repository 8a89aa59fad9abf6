"""meshd renews its own certificate: ``schedule`` (pure), ``issue`` (the call), ``renewer``."""
