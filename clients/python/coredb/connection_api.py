"""Seed 001's ConnectionAPI operations that map onto coredb, blocking (the
seed's services are Flask). coredb runs structured queries, not SQL text:
fetch_from_db takes the body of POST /data/query (a dict) and refuses a SQL
string with a clear error instead of guessing. Pooling, sessions and tokens
are the service's; these methods are thin calls over a Client."""
import os

from .errors import AuthenticationError, NotFoundError
from .sync import Client


class ConnectionAPI:
    """ConnectionAPI(app_manager=None, client=None): client is a coredb.Client;
    without one, COREDB_URL with COREDB_TOKEN or COREDB_EMAIL + COREDB_PASSWORD."""

    def __init__(self, app_manager=None, client=None):
        self.app_manager = app_manager
        self._own = client is None
        if client is None:
            url = os.environ.get("COREDB_URL")
            if not url:
                raise ValueError("COREDB_URL is not set")
            token = os.environ.get("COREDB_TOKEN")
            if token:
                client = Client(url, token=token)
            else:
                client = Client.login(url, os.environ["COREDB_EMAIL"], os.environ["COREDB_PASSWORD"])
        self.client = client

    def initialize(self, app=None):
        """Kept for the seed's call sequence; nothing to set up client-side."""
        return self

    def close(self):
        if self._own:
            self.client.close()

    # ---- database operations ----

    def fetch_from_db(self, query, params=None, as_dict=False):
        """Rows of a structured query (the body of POST /api/v1/data/query):
        dicts when as_dict, else tuples in the order of query["select"] (or of
        each row's keys)."""
        if not isinstance(query, dict):
            raise TypeError("coredb runs structured queries: pass the body of POST /api/v1/data/query "
                            "(a dict with table, select, filters, ...), not SQL text")
        if params:
            raise TypeError("params belong in query['filters'] (values are always bound by coredb)")
        body = dict(query)
        table = body.pop("table", None)
        rows = self.client.query(table, **body)["data"]
        if as_dict:
            return rows
        cols = query.get("select")
        return [tuple(r[c] for c in cols) if cols else tuple(r.values()) for r in rows]

    def execute_query(self, operations):
        """Writes, all or nothing: the operations of POST /data/transaction."""
        return self.client.run_transaction(operations)

    # ---- tokens ----

    def create_user_tokens(self, user_data):
        """Logs the user in: {access_token, refresh_token, expires_in, session_id, user}."""
        return self.client.login_tokens(user_data["email"], user_data["password"])

    def refresh_user_tokens(self, refresh_token):
        """A new pair; the given refresh token stops working."""
        return self.client.refresh_tokens(refresh_token)

    def revoke_user_tokens(self, user_id):
        """Ends every session of that user (self or admin)."""
        return self.client.revoke_sessions(user_id)

    def check_active_sessions(self, user_id=None):
        """The caller's active sessions (coredb lists only one's own)."""
        return self.client.sessions()

    # ---- users ----

    def get_user_by_email(self, email):
        try:
            return self.client.get_user_by_email(email)
        except NotFoundError:
            return None

    def create_user(self, username, email, hashed_password):
        """hashed_password: coredb hashes passwords itself (argon2id), so this is
        the password as the user typed it; the seed's name is kept."""
        return self.client.create_user(email, username, hashed_password)

    def delete_user(self, user_id):
        try:
            self.client.delete_user(user_id)
            return True
        except NotFoundError:
            return False

    def authenticate(self, email, password):
        try:
            return self.create_user_tokens({"email": email, "password": password})["user"]
        except AuthenticationError:
            return None
