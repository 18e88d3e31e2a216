"""Example: bot (see examples/README.md)."""
