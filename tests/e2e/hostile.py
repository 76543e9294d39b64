"""The hostile-identifier corpus shared by the administration tests
(test_admin_dbauth.py, test_admin_access.py): SQL smuggled into a name,
quotes, comments, NUL, look-alike letters (Cyrillic, right-to-left
override), wrong case, leading digit, reserved prefix, empty and oversized
names, and the JSON types that are no name at all. One list, so every
identifier field of every administration route is tried with the same
values."""

HOSTILE_NAMES = [
    "x'); DROP TABLE dbauth_canary; --",
    "true); DROP TABLE dbauth_canary; --",
    'a"b', "a'b", '"', "a--b", "a/*b*/", "a\u0000b", "\u0000",
    "\u0430dmin",                 # Cyrillic а
    "coredb_\u0430dmin",
    "Upper", "1abc", "a b", "a;b", "pg_evil", "", "a" * 64, "a" * 5000,
    "é", "\u202eevil",
]
WRONG_TYPES = [None, 1, 1.5, True, [], {}, ["a"]]

# words of the SQL coredb itself writes: an error message naming the field must not show any of them
SQL_WORDS = ["SELECT ", "GRANT ", "REVOKE ", "ALTER ", "CREATE ", "quote_ident", "pg_catalog", "sqlstate",
             "syntax error", "$1"]


def no_sql_in(err):
    """The error envelope's message and details carry no SQL of coredb's and no sqlstate."""
    text = f"{err.get('message', '')} {err.get('details')}"
    for word in SQL_WORDS:
        assert word.lower() not in text.lower(), (word, err)
