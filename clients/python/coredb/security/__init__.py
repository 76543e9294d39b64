"""Seed 000's security API: auth, encryption, access."""
