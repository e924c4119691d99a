"""Tests of featstore.data."""
