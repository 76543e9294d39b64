/*
 * redis_sentinel.c - `SENTINEL get-master-addr-by-name` over a list of
 * sentinels (redis_sentinel.h).
 *
 * A sentinel is asked on a short-lived connection of its own: discovery
 * runs only when the pool makes a connection, which is rare, and a kept
 * connection to each sentinel would be one more thing to reconnect. The
 * answer is trusted only as far as its form goes (an address we can
 * connect to); whether that address really is the master is checked by
 * the caller with ROLE on the connection it makes.
 */
#include "store/redis_sentinel.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define SENTINELS_MAX 16

struct sentinel {
    char *host;
    int port;
};

struct cdb__sentinel_set {
    struct sentinel s[SENTINELS_MAX];
    int n;
    char *list;
    char *master_name;
    char *password;      /* NULL: no AUTH */
};

static int parse_port(const char *p, size_t n)
{
    int v = 0;
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

/* One "host:port" or "[v6]:port" of n bytes into *out. */
static int parse_one(const char *p, size_t n, struct sentinel *out)
{
    const char *colon = n > 0 ? memrchr(p, ':', n) : NULL;
    const char *h = p, *he = colon;
    if (!colon)
        return -1;
    if (p[0] == '[') {
        if (colon[-1] != ']')
            return -1;
        h = p + 1;
        he = colon - 1;
    }
    if (he <= h || he - h >= CDB_SENTINEL_HOST_MAX)
        return -1;
    for (const char *c = h; c < he; c++)
        if (!isalnum((unsigned char)*c) && !strchr(".-_:", *c))
            return -1;
    out->port = parse_port(colon + 1, (size_t)(p + n - colon - 1));
    if (out->port < 0)
        return -1;
    out->host = strndup(h, (size_t)(he - h));
    return out->host ? 0 : -2;
}

cdb__sentinel_set *cdb__sentinel_set_new(const char *list, const char *master_name,
                                         const char *password, cdb_error *err)
{
    cdb__sentinel_set *s = calloc(1, sizeof *s);
    if (!s) {
        cdb_error_oom(err);
        return NULL;
    }
    if (!(s->list = strdup(list)) || !(s->master_name = strdup(master_name)) ||
        (password && !(s->password = strdup(password)))) {
        cdb_error_oom(err);
        goto fail_free;
    }
    for (const char *p = list;;) {
        size_t n = strcspn(p, ",");
        int rc = s->n < SENTINELS_MAX ? parse_one(p, n, &s->s[s->n]) : -1;
        if (rc == -2) {
            cdb_error_oom(err);
            goto fail_free;
        }
        if (rc < 0) {
            cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                          "REDIS_SENTINELS: sentinel %d must be host:port (at most %d)", s->n + 1,
                          SENTINELS_MAX);
            goto fail_free;
        }
        s->n++;
        if (!p[n])
            break;
        p += n + 1;
    }
    return s;

fail_free:
    cdb__sentinel_set_free(s);
    return NULL;
}

void cdb__sentinel_set_free(cdb__sentinel_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        free(s->s[i].host);
    if (s->password)
        sodium_memzero(s->password, strlen(s->password));
    free(s->password);
    free(s->master_name);
    free(s->list);
    free(s);
}

const char *cdb__sentinel_master_name(const cdb__sentinel_set *s)
{
    return s->master_name;
}

const char *cdb__sentinel_list(const cdb__sentinel_set *s)
{
    return s->list;
}

/* A sentinel's error text, cut and reduced to printable ASCII before it is logged. */
static void quote_reply(char *out, size_t len, const char *str, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && i < 80 && o + 1 < len; i++)
        out[o++] = isprint((unsigned char)str[i]) ? str[i] : '?';
    out[o] = '\0';
}

/* The [host, port] array of get-master-addr-by-name into host/port; -1 with why. */
static int read_address(const cdb__sentinel_set *s, const redisReply *rep, char *host, int *port,
                        char *why, size_t whylen)
{
    char text[96];
    if (rep->type == REDIS_REPLY_NIL ||
        (rep->type == REDIS_REPLY_ARRAY && rep->elements == 0)) {
        snprintf(why, whylen, "does not know master \"%s\"", s->master_name);
        return -1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        quote_reply(text, sizeof text, rep->str, rep->len);
        snprintf(why, whylen, "refused: %s", text);
        return -1;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_STRING)
        goto fail_form;
    const redisReply *h = rep->element[0], *p = rep->element[1];
    if (h->len == 0 || h->len >= CDB_SENTINEL_HOST_MAX)
        goto fail_form;
    for (size_t i = 0; i < h->len; i++)
        if (!isalnum((unsigned char)h->str[i]) && !strchr(".-_:", h->str[i]))
            goto fail_form;
    if ((*port = parse_port(p->str, p->len)) < 0)
        goto fail_form;
    memcpy(host, h->str, h->len);
    host[h->len] = '\0';
    return 0;
fail_form:
    snprintf(why, whylen, "answered something that is not a host and port");
    return -1;
}

/* One sentinel's answer; -1 with why. */
static int ask_one(const cdb__sentinel_set *s, const struct sentinel *sn, int timeout_ms,
                   char *host, int *port, char *why, size_t whylen)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    redisReply *rep = NULL;
    int rc = -1;
    redisContext *c = redisConnectWithTimeout(sn->host, sn->port, tv);

    if (!c) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    if (c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(why, whylen, "connect: %s", c->errstr);
        goto out;
    }
    if (s->password) {
        rep = redisCommand(c, "AUTH %s", s->password);
        /* the refusal's text is not copied: nothing here may echo a credential */
        if (!rep || c->err || rep->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "AUTH: %s", c->err ? c->errstr : "authentication failed");
            goto out;
        }
        freeReplyObject(rep);
    }
    rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", s->master_name);
    if (!rep || c->err) {
        /* a read timeout is reported by hiredis as EAGAIN's text: say what it means */
        if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
            snprintf(why, whylen, "no answer within %d ms", timeout_ms);
        else
            snprintf(why, whylen, "%s", c->err ? c->errstr : "no reply");
        goto out;
    }
    rc = read_address(s, rep, host, port, why, whylen);
out:
    freeReplyObject(rep);
    redisFree(c);
    return rc;
}

int cdb__sentinel_master(const cdb__sentinel_set *s, int timeout_ms, char *host, int *port,
                         char *why, size_t whylen)
{
    char one[160] = "";
    for (int i = 0; i < s->n; i++) {
        if (ask_one(s, &s->s[i], timeout_ms, host, port, one, sizeof one) == 0)
            return 0;
        /* the last failure is reported; every sentinel failed the same way more often than not */
        snprintf(why, whylen, "%d sentinel(s) gave no master for \"%s\"; the last, %s:%d: %s",
                 i + 1, s->master_name, s->s[i].host, s->s[i].port, one);
    }
    return -1;
}
