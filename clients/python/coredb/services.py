"""Seed 004's UserService over coredb's /api/v1/users and /auth/login.

The seed's methods take a session first; here the session is an AsyncClient
(whose token decides what it may see: self or admin). Lookups of a user that
does not exist answer None, as the seed's service does; a duplicate email or
username raises ConflictError (details name the field)."""
from .errors import AuthenticationError, NotFoundError

_USER_FIELDS = ("email", "username", "password", "display_name", "profile_picture_url", "role")


def _fields(user_data):
    data = user_data if isinstance(user_data, dict) else vars(user_data)
    return {k: v for k, v in data.items() if k in _USER_FIELDS and v is not None}


async def _or_none(coro):
    try:
        return await coro
    except NotFoundError:
        return None


class UserService:
    """User CRUD and authentication (seed 004)."""

    @staticmethod
    async def create_user(session, user_data):
        fields = _fields(user_data)
        return await session.create_user(fields.pop("email", None), fields.pop("username", None),
                                         fields.pop("password", None), **fields)

    @staticmethod
    async def get_user_by_id(session, user_id):
        return await _or_none(session.get_user(user_id))

    @staticmethod
    async def get_user_by_email(session, email):
        return await _or_none(session.get_user_by_email(email))

    @staticmethod
    async def get_user_by_username(session, username):
        return await _or_none(session.get_user_by_username(username))

    @staticmethod
    async def update_user(session, user_id, user_data):
        return await _or_none(session.update_user(user_id, **_fields(user_data)))

    @staticmethod
    async def delete_user(session, user_id):
        """True when deleted, False when there was no such user."""
        try:
            await session.delete_user(user_id)
            return True
        except NotFoundError:
            return False

    @staticmethod
    async def authenticate_user(session, email, password):
        """The user when the password is right, else None (a session is opened
        in coredb for it; the session client's own tokens are untouched)."""
        try:
            return (await session.login_tokens(email, password))["user"]
        except AuthenticationError as e:
            if e.code == "INVALID_CREDENTIALS":
                return None
            raise
