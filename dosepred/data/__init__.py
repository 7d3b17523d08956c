"""MONAI dictionary transforms that turn patients into model inputs and targets, datasets and caching."""
