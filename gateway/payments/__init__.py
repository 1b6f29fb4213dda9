"""Payment adapters behind one interface (DESIGN §8)."""
