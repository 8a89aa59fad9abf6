"""Provisioning hosts: facts -> plan -> apply, and the files it renders."""
