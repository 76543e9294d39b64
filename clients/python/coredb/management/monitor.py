"""Seed 000's DatabaseMonitor, through /api/v1/admin/metrics (admin)."""
from .._seed import SeedBase


class DatabaseMonitor(SeedBase):
    """Database monitoring management."""

    async def collect_table_metrics(self):
        return await self._call("metrics", "tables")

    async def collect_performance_metrics(self):
        return await self._call("metrics", "performance")

    async def collect_error_metrics(self):
        return await self._call("metrics", "errors")

    async def collect_all_metrics(self):
        return await self._call("metrics", "all")
