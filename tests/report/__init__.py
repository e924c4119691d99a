"""Tests of featstore.report."""
