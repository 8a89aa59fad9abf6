"""Suite-wide pytest setup: the testbed plugin (real hosts for end-to-end tests)."""

pytest_plugins = ["meshctl.testbed.pytest_plugin"]
