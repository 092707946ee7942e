"""Lease leader election (placeholder docstring, see elector.py)."""
