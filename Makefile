# atomizer: PGXS build, plus the two commands a newcomer runs (make demo,
# make test).  The PGXS part is only included once pg_config is present, so
# that "make test" and "make demo" can install the build dependencies first.

EXTENSION = atomizer
MODULE_big = atomizer
OBJS = \
	src/atomizer.o \
	src/guc.o \
	src/privilege.o \
	src/queue.o \
	src/limits.o \
	src/handler.o \
	src/hooks.o \
	src/jobs.o \
	src/dispatch.o \
	src/floor.o \
	src/store.o \
	src/sqlfunc.o \
	src/shmem.o \
	src/wakeup.o \
	src/launcher.o \
	src/scheduler.o \
	src/worker.o \
	src/dropdb.o \
	src/plans.o \
	src/cron.o \
	src/cron_words.o \
	src/schedule.o \
	src/external.o \
	src/subxact.o \
	src/jobstore.o \
	src/stats.o \
	src/rollup.o \
	src/wait.o \
	src/visibility.o \
	src/workflow.o

# The version this library's SQL objects are: the control file's default.
# sql/atomizer--$(EXTVERSION).sql, the full install script, is made from the
# frozen 0.1.0 script and the upgrade scripts after it, so that a fresh
# install and an updated one run the same statements.
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" atomizer.control)
UPGRADES = sql/atomizer--0.1.0--0.2.0.sql
DATA_built = sql/atomizer--$(EXTVERSION).sql
DATA = sql/atomizer--0.1.0.sql $(UPGRADES)
PG_CFLAGS = -Wall -Werror
PG_CPPFLAGS = -DATOMIZER_VERSION='"$(EXTVERSION)"' $(ATOMIZER_CPPFLAGS)
# ATOMIZER_CPPFLAGS: developers' switches, e.g. -DATOMIZER_NO_SQLFUNC (SQL
# handlers through fmgr only, to measure src/sqlfunc.c against it).
# No LLVM bitcode: it needs clang at build time and buys nothing here.
override with_llvm = no

# pg_regress suites for "make installcheck" (developers); "make test" runs
# these and every other suite through test/run.
REGRESS = $(patsubst test/sql/%.sql,%,$(sort $(wildcard test/sql/*.sql)))
REGRESS_OPTS = --inputdir=test --temp-instance=tmp_check \
	--temp-config=test/atomizer.conf
ISOLATION = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --temp-instance=tmp_check_iso \
	--temp-config=test/atomizer.conf

# the atomizer command-line tool (built by the rules at the end)
EXTRA_CLEAN = src/cli/atomizer $(BUILD_STAMP) $(DASHBOARD_GEN)

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

ifneq ($(PGXS),)
include $(PGXS)
else
all install installcheck:
	@echo "pg_config not found: run 'make test' or 'make demo' as root to install PostgreSQL 15 and its headers" >&2
	@exit 1
endif

# Objects built for one server must not be linked for another: the stamp
# names the server the tree was last built for, and everything depends on
# it ("make PG_CONFIG=..." after a build for another release rebuilds all).
BUILD_STAMP = .build-server
ifneq ($(PGXS),)
BUILD_FOR := $(PG_CONFIG) $(shell $(PG_CONFIG) --version) $(ATOMIZER_CPPFLAGS)
ifneq ($(BUILD_FOR),$(shell cat $(BUILD_STAMP) 2>/dev/null))
$(shell echo '$(BUILD_FOR)' > $(BUILD_STAMP); rm -f $(OBJS) src/cli/atomizer)
endif
endif

$(BUILD_STAMP):
	echo '$(BUILD_FOR)' > $@

# every module includes the shared header
$(OBJS): src/atomizer.h src/compat.h atomizer.control $(BUILD_STAMP)

sql/atomizer--$(EXTVERSION).sql: sql/atomizer--0.1.0.sql $(UPGRADES)
	cat $^ > $@

.PHONY: deps test demo bench deb

deps:
	PG_CONFIG='$(PG_CONFIG)' bash test/deps.sh

test: deps
	PG_CONFIG='$(PG_CONFIG)' bash test/run

demo: deps
	PG_CONFIG='$(PG_CONFIG)' bash demo/demo.sh

bench: deps
	PG_CONFIG='$(PG_CONFIG)' bash bench/run

# Debian packages (postgresql-NN-atomizer) for every PostgreSQL whose
# postgresql-server-dev-NN is installed, built the Debian way (debian/,
# pg_buildext) in a copy of the tree; the .deb files land in dist/.
deb:
	bash test/build-deb.sh dist

# The atomizer command-line tool (src/cli/), a libpq client: built by "all",
# installed into pg_config --bindir by "install", with a symbolic link to it
# in CLI_LINK_DIR so that "atomizer" is on PATH.  Packagers set CLI_LINK_DIR
# empty to install no link (debian/rules does).  "make install" replaces a
# link of its own there, never a file that is not a link.
CLI_LINK_DIR ?= /usr/local/bin

ifneq ($(PGXS),)
CLI_INCLUDEDIR := $(shell $(PG_CONFIG) --includedir)
CLI_LIBDIR := $(shell $(PG_CONFIG) --libdir)

all: src/cli/atomizer

CLI_SRCS = $(sort $(wildcard src/cli/*.c))
# "atomizer dashboard" serves HTTP with libmicrohttpd (libmicrohttpd-dev)
MHD_CFLAGS := $(shell pkg-config --cflags libmicrohttpd 2>/dev/null)
MHD_LIBS := $(shell pkg-config --libs libmicrohttpd 2>/dev/null || echo -lmicrohttpd)

# The dashboard's page (HTML, CSS, JavaScript in src/cli/dashboard/) is
# built into the binary: a generated C file holds each file's bytes.
DASHBOARD_ASSETS = $(sort $(wildcard src/cli/dashboard/*.html src/cli/dashboard/*.css src/cli/dashboard/*.js))
DASHBOARD_GEN = src/cli/dashboard/assets.gen.c

$(DASHBOARD_GEN): $(DASHBOARD_ASSETS) src/cli/dashboard/embed.sh
	sh src/cli/dashboard/embed.sh $(DASHBOARD_ASSETS) > $@.tmp && mv $@.tmp $@

src/cli/atomizer: $(CLI_SRCS) $(DASHBOARD_GEN) src/cli/cli.h src/cli/dashboard.h src/cli/persist.h $(BUILD_STAMP) atomizer.control
	$(CC) $(CFLAGS) -Wall -Werror -I$(CLI_INCLUDEDIR) -Isrc/cli $(MHD_CFLAGS) \
		-DATOMIZER_VERSION='"$(EXTVERSION)"' -o $@ $(CLI_SRCS) $(DASHBOARD_GEN) \
		-L$(CLI_LIBDIR) -lpq $(MHD_LIBS) -lpthread

.PHONY: install-cli uninstall-cli
install: install-cli
uninstall: uninstall-cli

install-cli: src/cli/atomizer
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) src/cli/atomizer '$(DESTDIR)$(bindir)/atomizer'
ifneq ($(strip $(CLI_LINK_DIR)),)
	@link='$(DESTDIR)$(CLI_LINK_DIR)/atomizer'; \
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
		echo "error: $$link exists and is not a link; not replacing it (set CLI_LINK_DIR= to install no link)" >&2; \
		exit 1; \
	fi; \
	$(MKDIR_P) '$(DESTDIR)$(CLI_LINK_DIR)' && \
	ln -sfn '$(bindir)/atomizer' "$$link" && \
	echo "atomizer: the command-line tool is $(bindir)/atomizer, linked from $(CLI_LINK_DIR)/atomizer"
endif

uninstall-cli:
	rm -f '$(DESTDIR)$(bindir)/atomizer'
ifneq ($(strip $(CLI_LINK_DIR)),)
	@link='$(DESTDIR)$(CLI_LINK_DIR)/atomizer'; \
	if [ -L "$$link" ] && [ "$$(readlink "$$link")" = '$(bindir)/atomizer' ]; then \
		rm -f "$$link"; \
	fi
endif
endif
