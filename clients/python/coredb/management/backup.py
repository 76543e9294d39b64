"""Seed 000's BackupManager, through /api/v1/admin/backups (admin). Backups
are made, verified and restored by the service, in its BACKUP_DIR."""
from .._seed import SeedBase


class BackupManager(SeedBase):
    """Database backup management."""

    async def create_backup(self):
        return await self._call("create_backup")

    async def restore_backup(self, filename):
        return await self._call("restore_backup", filename)

    async def verify_backup(self, filename):
        return await self._call("verify_backup", filename)

    async def cleanup_old_backups(self):
        return await self._call("cleanup_backups")

    async def list_backups(self):
        return await self._call("list_backups")
