"""Seed 000's DatabaseAccess: row-level security, schema grants, ownership,
through /api/v1/admin/rls, /schemas/{schema}/permissions, /ownership (admin)."""
from .._seed import SeedBase


class DatabaseAccess(SeedBase):
    """Database access control management."""

    async def enable_row_level_security(self, table_name, policy_name, policy, roles=None):
        return await self._call("enable_rls", table_name, policy_name, policy, roles)

    async def set_schema_permissions(self, schema_name, role, permissions):
        return await self._call("set_schema_permissions", schema_name, role, permissions)

    async def transfer_ownership(self, object_type, object_name, new_owner):
        return await self._call("transfer_ownership", object_type, object_name, new_owner)
