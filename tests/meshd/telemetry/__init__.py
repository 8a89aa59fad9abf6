"""Tests of meshd.telemetry."""
