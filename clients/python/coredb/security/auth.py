"""Seed 000's DatabaseAuth: database roles and login roles, through
/api/v1/admin/roles and /db-users (admin)."""
from .._seed import SeedBase


class DatabaseAuth(SeedBase):
    """Database authentication management."""

    async def create_role(self, role_name, permissions, description=None):
        return await self._call("create_role", role_name, permissions, description)

    async def create_user(self, username, password, roles, connection_limit=5):
        return await self._call("create_db_user", username, password, roles, connection_limit)

    async def update_user_password(self, username, new_password):
        return await self._call("update_db_user_password", username, new_password)

    async def revoke_user_access(self, username, roles=None):
        return await self._call("revoke_db_user", username, roles)
