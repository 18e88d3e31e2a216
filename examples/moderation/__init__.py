"""Example: moderation (see examples/README.md)."""
