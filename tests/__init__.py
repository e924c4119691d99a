"""featstore's tests, laid out as the package is: tests/<name>/ tests featstore/<name>/."""
