# Everything a fresh Debian/Ubuntu machine (as root) needs is installed by these targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config e2fsprogs xfsprogs dosfstools mtools fusefat fdisk attr systemd
STAMP := $(VENV)/.installed

.PHONY: deps venv test lint demo bench chaos clean install uninstall

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

lint: venv
	$(VENV)/bin/ruff check ebsfs tests bench
	$(VENV)/bin/mypy

# The tests mostly wait on servers, mounts and subprocesses: more workers than CPUs pays.
TEST_WORKERS ?= 6
test: venv lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: venv
	scripts/demo.sh

# For a server: ebsfs installed on its own (a virtualenv in $(PREFIX)/lib/ebsfs, not a link into
# this clone) and on PATH (mount.fuse3 and the units run /usr/local/bin/ebsfs), the systemd
# units, and an example /etc/ebsfs/ebsfs.toml unless one exists (docs/operations.md).
PREFIX ?= /usr/local
LIBDIR := $(PREFIX)/lib/ebsfs
UNITS := ebsfs@.service ebsfs-server.service
install: deps
	rm -rf $(LIBDIR)
	python3 -m venv $(LIBDIR)
	$(LIBDIR)/bin/python -m pip install -q --upgrade pip
	$(LIBDIR)/bin/python -m pip install -q .
	install -d -m 0755 $(PREFIX)/bin
	ln -sfn $(LIBDIR)/bin/ebsfs $(PREFIX)/bin/ebsfs
	install -d -m 0755 /etc/systemd/system
	install -m 0644 $(addprefix systemd/,$(UNITS)) /etc/systemd/system/
	install -d -m 0755 /etc/ebsfs
	test -e /etc/ebsfs/ebsfs.toml || install -m 0600 systemd/ebsfs.toml /etc/ebsfs/ebsfs.toml
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	else echo "systemd is not running here: units installed, not loaded"; fi

# Removes what install added, but /etc/ebsfs/ebsfs.toml (yours to keep or delete) and data.
uninstall:
	rm -f $(PREFIX)/bin/ebsfs $(addprefix /etc/systemd/system/,$(UNITS))
	rm -rf $(LIBDIR)
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "left in place: /etc/ebsfs/ebsfs.toml, spools under /var/lib/ebsfs, server data"

bench: venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

# Readers and dd writers through a mount while the server, the mount and the spool's disk
# fail (docs/reliability.md). CHAOS_ARGS="--duration 600 --seed 7" for a longer run.
chaos: venv
	$(PY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
