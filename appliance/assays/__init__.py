"""Assays: a model plus measurements plus a rule engine, one subpackage per assay."""
