#!/usr/bin/env bash
# Install every Debian package coredb needs to build, run, test and benchmark.
# Idempotent: when every package is already installed it returns at once
# without touching apt (dpkg-query only), so `make run` / `make test` can call
# it every time.
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config
  libpq-dev libevent-dev libhiredis-dev libjansson-dev libsodium-dev
  libjwt-dev libcrypt-dev libcmocka-dev
  libh2o-dev   # picohttpparser (src/http/conn.c)
  libhnswlib-dev  # the approximate vector index (src/data/vec_hnsw.cc, header-only C++)
  # runtime: embedded PostgreSQL and tools (pg_dump, pg_restore)
  postgresql-15 postgresql-contrib postgresql-client-15 redis-server
  redis-sentinel   # Redis high availability tests (tests/e2e/test_sentinel.py)
  # end-to-end tests (Debian's python3, not a pyenv one)
  python3 python3-pytest python3-requests python3-psycopg2 python3-redis python3-jwt
  python3-bcrypt
  python3-yaml   # tests/e2e/test_dashboards.py reads the alert rules
  python3-httpx  # the Python client, clients/python (tests/e2e/test_client_python.py)
  python3-asyncpg  # the lease DSN with a second driver (tests/e2e/test_client_python.py)
  python3-numpy  # vector search reference (tests/e2e/test_vectors.py, bench/vectors.py)
  python3-faiss  # FAISS flat index, the exact-search reference of bench/vectors.py
  # benchmarks and process tools
  wrk procps curl util-linux
  # metrics tests: promtool and a real Prometheus (tests/e2e/test_metrics.py)
  prometheus
  # many instances behind a balancer (tests/e2e/test_instances.py, docs/deployment.md)
  haproxy
  # make fuzz: clang and its libFuzzer runtime (libclang_rt.fuzzer is in libclang-rt-14-dev)
  clang libclang-rt-14-dev
)
# valgrind only for `make valgrind` (tests/soak/valgrind.sh), not for CI
if [ "${COREDB_DEPS_VALGRIND:-}" = "1" ]; then
  PACKAGES+=(valgrind)
fi
# node and npm for the OpenAPI validator (tools/, tests/e2e/test_openapi.py):
# Debian's, unless a node with its npm is already there (NodeSource's nodejs
# ships npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PACKAGES+=(nodejs npm)
fi

# The pinned npm packages of tools/ (package-lock.json), again only when the
# lock file is newer than what npm last installed.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
tools_install() {
  [ "$ROOT/tools/node_modules/.package-lock.json" -nt "$ROOT/tools/package-lock.json" ] && return 0
  echo "install-deps: npm ci --prefix tools" >&2
  npm ci --prefix "$ROOT/tools" --no-audit --no-fund >/dev/null
}
# The TypeScript client (clients/typescript, tests/e2e/test_client_typescript.py):
# its pinned dev dependencies (openapi-typescript, typescript) and its build,
# again only when the lock file or a source is newer than what was done last.
client_ts_install() {
  local dir="$ROOT/clients/typescript"
  if [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    echo "install-deps: npm ci --prefix clients/typescript" >&2
    npm ci --prefix "$dir" --no-audit --no-fund >/dev/null
  fi
  if [ ! -e "$dir/dist/index.js" ] || [ -n "$(find "$dir/src" -newer "$dir/dist/index.js" -print -quit)" ]; then
    echo "install-deps: npm run build --prefix clients/typescript" >&2
    npm run build --prefix "$dir" >/dev/null
  fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  tools_install
  client_ts_install
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Debian's packages would start a system PostgreSQL cluster and a Redis on
# their default ports; we run our own servers, so keep services from
# starting during the install (policy-rc.d) and skip the default cluster.
remove_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# coredb install-deps: no service starts during the install\nexit 101\n' |
    $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  remove_policy=1
fi
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/coredb.conf >/dev/null
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "$remove_policy" = 1 ]; then
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
# The tests start their own Prometheus on a free port; a system one would
# hold 9090, coredb's default PROMETHEUS_PORT, from the next boot on.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
fi
tools_install
client_ts_install
echo "install-deps: done" >&2
