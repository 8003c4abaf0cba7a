"""Helpers for the tests and benchmarks that are not tests themselves (model builders)."""
