"""Prediction: a network on a patient (full volume or sliding window, test-time mirroring), batch runs, writers."""
