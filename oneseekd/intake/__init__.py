"""Training requests: one schema and one validator for every door (files, submit, rows)."""
