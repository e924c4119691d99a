"""Tests of featstore.models."""
