"""Seed 000's DatabaseSettings: the seed's fields, read from the environment
(POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB,
POSTGRES_SCHEMA) with the seed's defaults, keyword arguments overriding, plus
what the client needs: COREDB_URL, and COREDB_TOKEN or COREDB_EMAIL +
COREDB_PASSWORD. A plain class (pydantic's BaseSettings is not needed for
reading a few variables). Secrets never appear in repr()."""
import os

_FIELDS = (("POSTGRES_USER", str, None), ("POSTGRES_PASSWORD", str, None),
           ("POSTGRES_HOST", str, "localhost"), ("POSTGRES_PORT", int, 5432),
           ("POSTGRES_DB", str, None), ("POSTGRES_SCHEMA", str, "public"),
           ("COREDB_URL", str, None), ("COREDB_TOKEN", str, None),
           ("COREDB_EMAIL", str, None), ("COREDB_PASSWORD", str, None))
_SECRET = {"POSTGRES_PASSWORD", "COREDB_TOKEN", "COREDB_PASSWORD"}


class DatabaseSettings:
    """Database configuration settings."""

    def __init__(self, **values):
        unknown = set(values) - {name for name, _, _ in _FIELDS}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, kind, default in _FIELDS:
            raw = values.get(name, os.environ.get(name, default))
            if raw is not None and not isinstance(raw, kind):
                try:
                    raw = kind(raw)
                except ValueError:
                    raise ValueError(f"{name}: not a valid {kind.__name__}: {raw!r}") from None
            setattr(self, name, raw)

    def client(self):
        """An AsyncClient for COREDB_URL with COREDB_TOKEN (log in with the
        email and password yourself, or use the seed classes, which do)."""
        from ..aio import AsyncClient
        if not self.COREDB_URL:
            raise ValueError("COREDB_URL is not set")
        return AsyncClient(self.COREDB_URL, token=self.COREDB_TOKEN)

    def dict(self):
        return {name: getattr(self, name) for name, _, _ in _FIELDS}

    def __repr__(self):
        shown = ", ".join(f"{n}={'***' if n in _SECRET and v else repr(v)}"
                          for n, v in self.dict().items())
        return f"DatabaseSettings({shown})"
