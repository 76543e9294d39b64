"""Seed 000's health checks, through /api/v1/admin/health/* (admin).

Here "status" is the finding, as the seed's example reads it
(`if health["status"] != "healthy"`): "healthy" | "degraded" | "unhealthy",
with "error" the reason when not healthy. A check that cannot be made (the
service unreachable, a refused token) is "unhealthy" with the error."""
from .._seed import SeedBase, now_iso


def _verdict(body):
    out = dict(body)
    out["status"] = body.get("health", "unhealthy")
    out["error"] = None if out["status"] == "healthy" else (body.get("reason") or "unknown")
    out.setdefault("timestamp", now_iso())
    return out


class DatabaseHealth(SeedBase):
    """The three detailed checks, as methods."""

    async def _check(self, part):
        out = await self._call("health_detail", part)
        if out["status"] == "failure":
            out["status"] = "unhealthy"
            return out
        return _verdict(out)

    async def check_connection_health(self):
        return await self._check("connection")

    async def check_query_health(self):
        return await self._check("query")

    async def check_resource_health(self):
        return await self._check("resource")


async def check_connection_health():
    return await DatabaseHealth().check_connection_health()


async def check_query_health():
    return await DatabaseHealth().check_query_health()


async def check_resource_health():
    return await DatabaseHealth().check_resource_health()


__all__ = ["DatabaseHealth", "check_connection_health", "check_query_health",
           "check_resource_health"]
