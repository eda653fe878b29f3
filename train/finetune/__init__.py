"""Fine-tuning on labelled 3D tasks: segmentation and classification, from scratch or Genesis."""
