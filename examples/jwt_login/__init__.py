"""Example: jwt_login (see examples/README.md)."""
