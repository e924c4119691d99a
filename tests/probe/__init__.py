"""Tests of featstore.probe."""
