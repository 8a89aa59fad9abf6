"""Tests of meshd.tls."""
