"""anatomix: models layer."""
