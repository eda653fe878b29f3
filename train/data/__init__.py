"""Training data: sub-volume (cube) extraction and on-disk caches."""
