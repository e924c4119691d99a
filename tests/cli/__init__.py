"""Tests of featstore.cli."""
