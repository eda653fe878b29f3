"""anatomix: kernels layer."""
