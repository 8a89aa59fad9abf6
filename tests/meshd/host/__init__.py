"""Tests of meshd.host."""
