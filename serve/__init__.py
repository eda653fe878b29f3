"""anatomix: serve layer."""
