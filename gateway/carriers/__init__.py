"""Carrier adapters behind one interface (DESIGN §8)."""
