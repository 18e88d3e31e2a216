"""Runnable examples of apps on wschat (examples/README.md); tests/test_examples.py runs them."""
