"""Patients as compact training samples, their batch-side augmentation and the beam geometry inputs."""
