# reops — every target installs what it needs first (apt as root, a venv with the deps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LAB    ?= lab
HOSTS  ?= 20
APT_PACKAGES := openssh-server openssh-client rsync sudo openssl iproute2 gcc pkg-config \
                libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
                qemu-utils netcat-openbsd chromium \
                postgresql libpq5 \
                busybox-static dropbear-bin genisoimage \
                libvirt-daemon-driver-lxc
STAMP  := $(VENV)/.installed

.PHONY: all system venv test lint run bench clean lab-up lab-down

all: test

# System packages: installed only when running as root and something is missing.
system:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	  getent group kvm >/dev/null || groupadd --system kvm; \
	  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu; \
	  id libvirt-qemu >/dev/null 2>&1 || useradd --system -M -d /var/lib/libvirt \
	    -s /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu; \
	else \
	  command -v sshd >/dev/null || test -x /usr/sbin/sshd || { echo "sshd missing: sudo apt-get install $(APT_PACKAGES)"; exit 2; }; \
	fi

$(STAMP): pyproject.toml agent/pyproject.toml
	$(MAKE) system
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,libvirt]' -e ./agent
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

lint: venv
	$(BIN)/ruff check reops agent tests bench flows
	$(BIN)/mypy
	$(BIN)/lint-imports

# The main job on the embedded default: a local lab fleet and an example saved flow.
run: venv
	-$(BIN)/reops lab down --dir $(LAB) 2>/dev/null
	$(BIN)/reops lab up --hosts $(HOSTS) --dir $(LAB)
	$(BIN)/reops run flows/examples/fleet_report.py --inventory $(LAB)/inventory.toml --selector all --save fleet.parquet
	@echo "lab is still up: try  $(BIN)/reops exec -i $(LAB)/inventory.toml all -- uptime ; stop it with  $(BIN)/reops lab down --dir $(LAB)"

lab-up: venv
	$(BIN)/reops lab up --hosts $(HOSTS) --dir $(LAB)

lab-down: venv
	$(BIN)/reops lab down --dir $(LAB)

# Benchmarks (not part of `make test`): SSH peers, agents vs Salt, machines, and memory
# under hostile output and unauthenticated connections (issue 8). Ratios matter,
# not absolute times: the peers run in the same session on the same box.
bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_agents.py
	test -x bench/.salt/bin/salt || { $(PYTHON) -m venv bench/.salt && bench/.salt/bin/pip install -q salt; }
	$(BIN)/python bench/salt_peer.py --salt-venv bench/.salt --minions 10,50
	$(BIN)/python bench/bench_machines.py --qemu 20
	$(BIN)/python bench/bench_output.py
	$(BIN)/python bench/stream_big.py --slow
	$(BIN)/python bench/bench_preauth.py
	$(BIN)/python bench/bench_endless.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
