"""Tests of meshd.proxy."""
