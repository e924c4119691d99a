"""Tests of featstore.store."""
