# coredb build. `make` builds the release binary build/coredb; `make san` the
# ASan+UBSan one (build-san/coredb). Quiet unless V=1.
CC      ?= cc
PKGS    := libpq libevent_pthreads libevent hiredis jansson libsodium libjwt libcrypt
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
PG_BINDIR  := $(shell pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)

WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wformat=2
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) -Iinclude -Isrc $(PKG_CFLAGS) \
             -DCDB_SOURCE_DIR='"$(CURDIR)"' -DCDB_PG_BINDIR='"$(PG_BINDIR)"' -MMD -MP
LDLIBS  := $(PKG_LIBS) -lh2o -lpthread -lm  # libh2o: picohttpparser only (no .pc without libuv-dev)
LDLIBS  += -lstdc++  # src/data/vec_hnsw.cc (hnswlib)

BUILD   ?= build
LIB_SRC := $(wildcard src/core/*.c src/store/*.c src/security/*.c src/identity/*.c src/data/*.c \
                     src/management/*.c src/service/*.c src/http/*.c)
CLI_SRC := $(wildcard src/cli/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
# the one C++ file: the hnswlib shim (src/data/vec_hnsw.cc, issue 15)
CXX     ?= c++
LIB_CXX_SRC := $(wildcard src/data/*.cc)
LIB_OBJ += $(LIB_CXX_SRC:%.cc=$(BUILD)/%.o)
ALL_CXXFLAGS = -std=c++14 -D_GNU_SOURCE -Wall -Wextra -Werror $(CFLAGS) $(EXTRA_CFLAGS) -Iinclude -Isrc -MMD -MP
# UBSan's vptr (and clang's function) checks need the C++ UBSan runtime, which the C link
# (cc/clang) does not bring
ALL_CXXFLAGS += $(if $(findstring undefined,$(EXTRA_CFLAGS)),-fno-sanitize=vptr \
                  $(if $(findstring clang,$(CXX)),-fno-sanitize=function))
# hnswlib 0.6.2's SSE prefetches read one link past a neighbour list (searchBaseLayer, only an
# address to prefetch): ASan and valgrind (build-vg) builds use its plain loops, so they check
# hnswlib and the shim without that report
ALL_CXXFLAGS += $(if $(findstring address,$(EXTRA_CFLAGS))$(filter build-vg,$(BUILD)),-DNO_MANUAL_VECTORIZATION)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
EXAMPLES := $(BUILD)/examples/embed
UNIT_SRC := $(wildcard tests/unit/*/*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# generated includes (openapi_doc.inc, below)
ALL_CFLAGS += -I$(BUILD)/gen

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all run test san bench bench-metrics bench-leases bench-encryption clean deps unit-bins lint man install
.PHONY: fuzz fuzz-bins
all: $(BUILD)/coredb $(EXAMPLES)

deps:
	$(Q)bash scripts/install-deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CXX $<"
	$(Q)$(CXX) $(ALL_CXXFLAGS) -c $< -o $@

# coredb_build_info's commit label (src/core/metrics.c): metrics.o is rebuilt
# when the commit changes, through a stamp rewritten only then.
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
$(BUILD)/commit.txt: FORCE
	@mkdir -p $(dir $@)
	@echo '$(COMMIT)' | cmp -s - $@ || echo '$(COMMIT)' > $@
$(BUILD)/src/core/metrics.o: $(BUILD)/commit.txt
$(BUILD)/src/core/metrics.o: ALL_CFLAGS += -DCDB_COMMIT='"$(COMMIT)"'
FORCE:
# The binary serves docs/openapi.json (src/http/routes_openapi.c): embedded
# at build time, so a deployed binary needs no source tree.
$(BUILD)/gen/openapi_doc.inc: docs/openapi.json scripts/embed-file.py
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  GEN $@"
	$(Q)python3 scripts/embed-file.py docs/openapi.json openapi_doc $@

$(BUILD)/src/http/routes_openapi.o: $(BUILD)/gen/openapi_doc.inc

$(BUILD)/libcoredb.a: $(LIB_OBJ)
	@[ "$(V)" = 1 ] || echo "  AR  $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/coredb: $(CLI_OBJ) $(BUILD)/libcoredb.a
	@[ "$(V)" = 1 ] || echo "  LD  $@"
	$(Q)$(CC) $(CFLAGS) $(EXTRA_CFLAGS) $(EXTRA_LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libcoredb.a $(LDLIBS)

# Examples see only the public headers (include/), as an embedder would.
$(BUILD)/examples/%: examples/%.c $(BUILD)/libcoredb.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) -Iinclude $(PKG_CFLAGS) \
	  $(EXTRA_LDFLAGS) -o $@ $< $(BUILD)/libcoredb.a $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libcoredb.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(ALL_CFLAGS) $(EXTRA_LDFLAGS) -o $@ $< $(BUILD)/libcoredb.a $(LDLIBS) -lcmocka

unit-bins: $(UNIT_BIN)

# The man page and the bash completion are printed by the program from its
# own help text (src/cli/help.c), so they cannot drift from what it accepts.
man: $(BUILD)/coredb.1

$(BUILD)/coredb.1: $(BUILD)/coredb
	@[ "$(V)" = 1 ] || echo "  MAN $@"
	$(Q)./$(BUILD)/coredb help --man > $@.tmp && mv $@.tmp $@

$(BUILD)/coredb.bash: $(BUILD)/coredb
	$(Q)./$(BUILD)/coredb completion bash > $@.tmp && mv $@.tmp $@

# make install [PREFIX=/usr/local] [DESTDIR=/staging]: the program, its man
# page and bash completion, the public headers and libcoredb.a.
PREFIX  ?= /usr/local
install: $(BUILD)/coredb $(BUILD)/libcoredb.a $(BUILD)/coredb.1 $(BUILD)/coredb.bash
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/coredb \
	  $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 755 $(BUILD)/coredb $(DESTDIR)$(PREFIX)/bin/coredb
	install -m 644 $(BUILD)/libcoredb.a $(DESTDIR)$(PREFIX)/lib/libcoredb.a
	install -m 644 include/coredb/*.h $(DESTDIR)$(PREFIX)/include/coredb/
	install -m 644 $(BUILD)/coredb.1 $(DESTDIR)$(PREFIX)/share/man/man1/coredb.1
	install -m 644 $(BUILD)/coredb.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/coredb

# Layer check (scripts/check-layers.py): #include lines, and the calls the
# built objects make; fails on an upward or sideways edge or a circle.
lint: all
	$(Q)python3 scripts/check-layers.py --objects $(BUILD)

# The two commands of the README.
run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)exec ./$(BUILD)/coredb serve

test: deps
	$(Q)bash scripts/run-tests.sh

# the whole end-to-end suite on the ASan+UBSan build (CI runs a part of it:
# SAN_SHORT in scripts/run-tests.sh), with the unit tests, without the release pass
.PHONY: test-san
test-san: deps
	$(Q)COREDB_TEST_SAN=1 COREDB_TEST_RELEASE=0 bash scripts/run-tests.sh

san:
	$(Q)$(MAKE) --no-print-directory BUILD=build-san CFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" all unit-bins

bench: deps all
	$(Q)bash bench/run.sh

# the cost of recording metrics: the cache-hit path with and without them (issue 12)
bench-metrics: deps all
	$(Q)bash bench/metrics_cost.sh

# column encryption: encrypted vs plain column through the data API, rotation rows/s (issue 11)
bench-encryption: deps all
	$(Q)/usr/bin/python3 bench/encryption.py

# the API path with the lease-aware coredb.current_user_id() against the one before (issue 9)
bench-leases: deps all
	$(Q)/usr/bin/python3 bench/lease_rls.py

# the vector store: exact and HNSW search vs numpy and FAISS flat: QPS, p99, recall@10 (issue 15)
.PHONY: bench-vectors
bench-vectors: deps all
	$(Q)/usr/bin/python3 bench/vectors.py

# cache-miss reads with 0 and 1 replica, the read-your-writes check (issue 14)
.PHONY: bench-replicas
bench-replicas: deps all
	$(Q)/usr/bin/python3 bench/replicas.py

# the request engine's Targets in one run: pgbench, miss, hit, /health/live at 64 and
# 1,000 connections, 10,000 idle connections, perf profiles (issue 8); DURATION=5s for a smoke run
.PHONY: bench-engine
bench-engine: deps all
	$(Q)bash bench/engine.sh

# issue 8: the kernel's price of a miss's loopback exchanges on this machine, without coredb
.PHONY: bench-wake
bench-wake:
	$(Q)bash bench/wake_cost.sh

# issue 8: the delay between a write on one instance and another's first-level cache
.PHONY: bench-invalidation
bench-invalidation: deps all
	$(Q)COREDB_BIN=$(CURDIR)/build/coredb /usr/bin/python3 bench/invalidation.py

# libFuzzer harnesses (fuzz/, issue 16): clang with libFuzzer + ASan + UBSan,
# the library rebuilt in build-fuzz/ with coverage instrumentation. `make
# fuzz` runs each for FUZZ_SECONDS (default 60, scripts/fuzz.sh).
FUZZ_SRC := $(wildcard fuzz/*.c)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
$(BUILD)/fuzz/%: fuzz/%.c $(wildcard fuzz/*.h) $(BUILD)/libcoredb.a
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  FUZ $<"
	$(Q)$(CC) $(ALL_CFLAGS) -Wno-unused-function -fsanitize=fuzzer -o $@ $< $(BUILD)/libcoredb.a $(LDLIBS)

fuzz-bins:
	$(Q)$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang CXX=clang++ CFLAGS="-O1 -g" \
	  EXTRA_CFLAGS="-Wno-format-nonliteral -fsanitize=fuzzer-no-link $(FUZZ_SAN)" \
	  $(FUZZ_SRC:fuzz/%.c=build-fuzz/fuzz/%)

fuzz: deps fuzz-bins
	$(Q)FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) bash scripts/fuzz.sh

# faults under load with a client-side ledger (issue 16, tests/chaos): two
# instances, ten faults, each followed by a steady phase of CHAOS_SECONDS
.PHONY: chaos
CHAOS_SECONDS ?= 15
chaos: deps all
	$(Q)CHAOS_SECONDS=$(CHAOS_SECONDS) COREDB_BIN=$(CURDIR)/$(BUILD)/coredb \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider -s tests/chaos

# soak and resource bounds (issue 16): connection bounds, then SOAK_MINUTES
# (default 60) of steady load with RSS/fds/threads/pool/backends sampled
.PHONY: soak valgrind
soak: deps all
	$(Q)/usr/bin/python3 -m pytest -q -s -p no:cacheprovider tests/soak

# the e2e tests (a subset: VALGRIND_TESTS) with coredb under valgrind memcheck
valgrind: deps
	$(Q)bash tests/soak/valgrind.sh

clean:
	rm -rf build build-san build-nometrics build-fuzz build-vg

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
