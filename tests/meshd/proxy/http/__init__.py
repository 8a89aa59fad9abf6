"""Tests of meshd.proxy.http."""
