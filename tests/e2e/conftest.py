"""Fixtures: one shared PostgreSQL and Redis for the session, a fresh
database per coredb instance, and private servers for tests that stop them."""
import pytest

from servers import Coredb, PgServer, RedisServer, TEST_JWT_SECRET


@pytest.fixture(scope="session")
def pg():
    server = PgServer("pg-shared")
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.destroy()


def base_env(pg_server, db, redis=None, **extra):
    # Cheap argon2id and generous quotas keep the suite fast; the tests of
    # hashing cost and rate limits set their own values. DB_LOOP_CONNECTIONS=1
    # keeps the loops' PostgreSQL connections on (as the default pool of 20
    # has them) in a pool of 5: data-API misses run on the loops throughout
    # the suite; tests of small pools (DB_POOL_MAX < 4) run without them.
    env = {"DATABASE_URL": pg_server.url(db), "JWT_SECRET": TEST_JWT_SECRET,
           "DB_POOL_MIN": "1", "DB_POOL_MAX": "5", "DB_LOOP_CONNECTIONS": "1", "LOG_LEVEL": "info",
           "PASSWORD_HASH_OPSLIMIT": "1", "PASSWORD_HASH_MEMLIMIT_KIB": "8192",
           "RATE_LIMIT_ANON": "10000", "RATE_LIMIT_USER": "10000", "RATE_LIMIT_PREMIUM": "10000"}
    if redis is not None:
        env["REDIS_URL"] = redis.url
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def start_coredb(pg, redis_server):
    """Factory: start_coredb(redis=True, db=None, **env) -> Coredb on a fresh database."""
    started = []

    def start(redis=True, db=None, pg_server=None, wait=True, **extra):
        server = pg_server or pg
        name = db or server.create_database()
        inst = Coredb(base_env(server, name, redis_server if redis else None, **extra), wait=wait)
        inst.db = name
        inst.pg = server
        started.append(inst)
        return inst

    yield start
    for inst in started:
        inst.stop_clean()


@pytest.fixture(scope="session")
def coredb_shared(pg, redis_server):
    """One instance for read-only tests (faster than one per test)."""
    name = pg.create_database()
    inst = Coredb(base_env(pg, name, redis_server))
    inst.db = name
    inst.pg = pg
    yield inst
    inst.stop_clean()


@pytest.fixture
def private_pg():
    server = PgServer("pg-private")
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def own_redis():
    """A Redis of the module's own, so stopping or killing it disturbs no other module."""
    server = RedisServer()
    yield server
    server.destroy()


@pytest.fixture
def private_redis():
    server = RedisServer()
    yield server
    server.destroy()


# ---- data API modules: one instance per module, on the module's own Redis
# database (REDIS_DB), so cached entries of one module never reach another ----

@pytest.fixture(scope="module")
def inst(request, pg, redis_server):
    from datahelp import start_instance
    server = start_instance(pg, redis_server, request.module.REDIS_DB)
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def admin(inst):
    from datahelp import admin_of
    return admin_of(inst)


@pytest.fixture(scope="module")
def rds(request, redis_server):
    from datahelp import redis_client
    return redis_client(redis_server, request.module.REDIS_DB)
