"""Tests of featstore.extract."""
