"""Seed 000's DatabaseEncryption: column encryption through
/api/v1/admin/encryption (admin). The keys stay in the service
(DB_ENCRYPTION_KEY there): the master_key argument is accepted for the seed's
signature and never sent or kept."""
from .._seed import SeedBase


class DatabaseEncryption(SeedBase):
    """Database encryption management."""

    def __init__(self, master_key=None, client=None):
        # Deliberately dropped: coredb wraps column keys with its own master key.
        del master_key
        super().__init__(client)

    async def setup_column_encryption(self, table_name, column_name):
        return await self._call("encrypt_column", table_name, column_name)

    async def rotate_encryption_key(self, table_name, column_name):
        return await self._call("rotate_column_key", table_name, column_name)

    async def audit_encryption(self, table_name=None):
        return await self._call("encryption_audit", table_name)
