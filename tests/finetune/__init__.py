"""Tests of featstore.finetune."""
