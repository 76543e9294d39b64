"""Seed 000's infrastructure: configuration."""
