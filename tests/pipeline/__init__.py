"""Tests of featstore.pipeline."""
