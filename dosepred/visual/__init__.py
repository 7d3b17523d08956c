"""Figures and tables that show a patient and its dose: pure builders for the viewer, the demo and reports."""
