"""Seed 000's management API: health, backup, monitor."""
