"""Shipped anatomies (TOML), installed as the package data ``bmiss.anatomies`` (see setup.py)."""
