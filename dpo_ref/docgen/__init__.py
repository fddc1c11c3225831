"""Generators of the docs' tables and quoted figures."""
