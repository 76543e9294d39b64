/*
 * user_input.c - the validation rules of the users API (user_input.h).
 */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "identity/identity_internal.h"
#include "identity/user_input.h"
#include "coredb/role.h"


static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* No control characters (C0, DEL): a display name is shown to people. */
static bool no_controls(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* No spaces or control characters (C0, DEL). */
static bool printable_nospace(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return false;
    return true;
}

/*
 * The addresses people type: an RFC 5322 dot-atom local part (atext, single
 * dots not at either end, <= 64 bytes; no quoted forms, no comments) and a
 * domain of >= 2 dot-separated labels of letters, digits and inner hyphens
 * (<= 63 each). Bytes >= 0x80 are accepted as letters for internationalized
 * addresses.
 */
static bool email_local_ok(const char *s, size_t len)
{
    static const char atext_extra[] = "!#$%&'*+-/=?^_`{|}~";
    if (len == 0 || len > 64 || s[0] == '.' || s[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (s[i + 1] == '.')
                return false;
        } else if (!(isalnum(c) || c >= 0x80 || (c && strchr(atext_extra, c)))) {
            return false;
        }
    }
    return true;
}

static bool email_domain_ok(const char *s)
{
    size_t labels = 0;
    while (*s) {
        size_t n = strcspn(s, ".");
        if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
            return false;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!(isalnum(c) || c == '-' || c >= 0x80))
                return false;
        }
        labels++;
        s += n;
        if (*s == '.' && *++s == '\0')
            return false; /* trailing dot */
    }
    return labels >= 2;
}

int cdb_user_check_email(const char *s, char out[EMAIL_MAX + 1], cdb_error *err)
{
    size_t len = strlen(s);
    if (len == 0 || len > EMAIL_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "email",
                                    "email must be 1 to %d characters", EMAIL_MAX);
    const char *at = strrchr(s, '@');
    if (!at || !email_local_ok(s, (size_t)(at - s)) || !email_domain_ok(at + 1))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "email", "email is not a valid address");
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    return 0;
}

int cdb_user_check_username(const char *s, cdb_error *err)
{
    size_t len = strlen(s);
    bool ok = len >= USERNAME_MIN && len <= USERNAME_MAX &&
              strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_.-") == len;
    return ok ? 0 : cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "username",
                                         "username must be %d to %d characters of a-z, 0-9, '_', '.', '-'",
                                         USERNAME_MIN, USERNAME_MAX);
}

/* email (may be NULL) is the address the password must differ from. */
int cdb_user_check_password(const cdb_config *cfg, const char *pw, size_t len, const char *email,
                            cdb_error *err)
{
    int rc = cdb_password_check_length(pw, len, cfg->password_min_length, "password", err);
    if (rc < 0)
        return rc;
    if (email && strcasecmp(pw, email) == 0)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "password",
                                    "password must not be the email address");
    return 0;
}

static int check_picture_url(const char *s, cdb_error *err)
{
    size_t scheme = strncasecmp(s, "https://", 8) == 0 ? 8 : strncasecmp(s, "http://", 7) == 0 ? 7 : 0;
    if (!scheme || !s[scheme] || utf8_chars(s) > PICTURE_URL_MAX || !printable_nospace(s))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "profile_picture_url",
                                    "profile_picture_url must be an http(s) URL of at most %d characters",
                                    PICTURE_URL_MAX);
    return 0;
}

static int check_string(json_t *v, const char *field, bool nullable, cdb_error *err)
{
    if (json_is_string(v) || (nullable && json_is_null(v)))
        return 0;
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s must be a string%s", field,
                                nullable ? " or null" : "");
}

/*
 * Checks every field of a create (required: email, username, password) or
 * update (all optional) body. The password-equals-email rule is checked here
 * when the body carries both; an update without a new email checks it later
 * against the stored one.
 */
int cdb_user_input_parse(const cdb_config *cfg, json_t *body, bool create, cdb_user_input *in,
                         cdb_error *err)
{
    const char *key;
    json_t *v;

    memset(in, 0, sizeof *in);
    if (!json_is_object(body))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "body", "The body must be a JSON object");
    json_object_foreach(body, key, v) {
        bool nullable = strcmp(key, "display_name") == 0 || strcmp(key, "profile_picture_url") == 0;
        bool known = nullable || strcmp(key, "email") == 0 || strcmp(key, "username") == 0 ||
                     strcmp(key, "password") == 0 || strcmp(key, "role") == 0;
        if (!known)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key, "Unknown field '%.64s'", key);
        if (check_string(v, key, nullable, err) < 0)
            return err->code;
        const char *s = json_string_value(v);     /* NULL for JSON null */
        if (s && strlen(s) != json_string_length(v))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key, "%s must not contain NUL", key);
        if (strcmp(key, "email") == 0) {
            if (cdb_user_check_email(s, in->email, err) < 0)
                return err->code;
            in->has_email = true;
        } else if (strcmp(key, "username") == 0) {
            if (cdb_user_check_username(s, err) < 0)
                return err->code;
            in->username = s;
        } else if (strcmp(key, "password") == 0) {
            in->password = s;
            in->password_len = json_string_length(v);
        } else if (strcmp(key, "role") == 0) {
            if (cdb_role_parse(s) < 0)
                return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "role",
                                            "role must be one of admin, user, premium");
            in->role = s;
        } else if (strcmp(key, "display_name") == 0) {
            if (s && (utf8_chars(s) > DISPLAY_NAME_MAX || !no_controls(s)))
                return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key,
                                            "display_name must be at most %d characters, without control "
                                            "characters", DISPLAY_NAME_MAX);
            in->display_name = s;
            in->has_display_name = true;
        } else {
            if (s && check_picture_url(s, err) < 0)
                return err->code;
            in->picture_url = s;
            in->has_picture_url = true;
        }
    }
    if (create && !in->has_email)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "email", "email is required");
    if (create && !in->username)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "username", "username is required");
    if (create && !in->password)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "password", "password is required");
    if (in->password)
        return cdb_user_check_password(cfg, in->password, in->password_len,
                              in->has_email ? in->email : NULL, err);
    return 0;
}

