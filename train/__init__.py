"""anatomix: train layer."""
