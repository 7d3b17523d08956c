"""The data layer, torch-free: the Patient model and every format a patient is read from or written to."""
