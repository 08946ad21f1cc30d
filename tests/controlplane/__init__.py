"""Tests that run against a real control plane (the test bed, or kind)."""
