"""The client's version: the service's (coredb --version). A 1.x client works
with any 1.x service."""
__version__ = "1.0.0"
