"""anatomix: export layer."""
