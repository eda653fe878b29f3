"""anatomix: imaging layer."""
