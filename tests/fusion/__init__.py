"""Tests of featstore.fusion."""
