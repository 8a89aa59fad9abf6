"""Tests of meshd.admin."""
