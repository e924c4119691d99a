"""Reporting: results as tables (terminal) and JSON records; later, the study's report."""
