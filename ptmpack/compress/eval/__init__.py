"""Calibration windows and the quality measures every step reports."""
