"""meshctl's command line: one module per command group, mounted in ``app``."""
