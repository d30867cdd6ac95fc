# Everything a fresh Debian/Ubuntu machine (as root) needs is installed by these targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config e2fsprogs fdisk attr systemd
STAMP := $(VENV)/.installed

.PHONY: deps venv test lint demo bench chaos clean install

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

test: venv lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv
	scripts/demo.sh

# For a server: ebsfs on PATH (mount.fuse3 and the units run /usr/local/bin/ebsfs), the systemd
# units, and an example /etc/ebsfs/ebsfs.toml unless one exists (docs/operations.md).
PREFIX ?= /usr/local
install: venv
	ln -sfn $(abspath $(VENV))/bin/ebsfs $(PREFIX)/bin/ebsfs
	install -m 0644 systemd/ebsfs@.service systemd/ebsfs-server.service /etc/systemd/system/
	install -d -m 0755 /etc/ebsfs
	test -e /etc/ebsfs/ebsfs.toml || install -m 0600 systemd/ebsfs.toml /etc/ebsfs/ebsfs.toml
	-systemctl daemon-reload 2>/dev/null

bench: venv
	$(PY) -m bench

# Readers and dd writers through a mount while the server, the mount and the spool's disk
# fail (docs/reliability.md). CHAOS_ARGS="--duration 600 --seed 7" for a longer run.
chaos: venv
	$(PY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
