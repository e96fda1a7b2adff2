# reops — every target installs what it needs first (apt as root, a venv with the deps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LAB    ?= lab
HOSTS  ?= 20
GUESTS ?= 0
GHOME  := $(abspath $(LAB))/guests
GUEST_ENV := REOPS_HOME=$(GHOME) REOPS_CONFIG=$(GHOME)/config.toml
IMAGE_CACHE ?= $(HOME)/.reops/cache/images
APT_PACKAGES := openssh-server openssh-client rsync sudo openssl iproute2 gcc pkg-config \
                libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
                qemu-utils netcat-openbsd chromium \
                postgresql libpq5 \
                busybox-static dropbear-bin genisoimage \
                libvirt-daemon-driver-lxc
STAMP  := $(VENV)/.installed

.PHONY: all system venv test lint run bench clean lab-up lab-down guests-down

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
# GUESTS=N also boots N tiny guests (Type `guest`, embedded QEMU) and reports them too; they
# live in $(LAB)/guests (their REOPS_HOME) under a short QEMU root in /tmp, and stay up with
# the lab until `make lab-down`.
run: venv
	-$(MAKE) --no-print-directory guests-down
	-$(BIN)/reops lab down --dir $(LAB) 2>/dev/null
	$(BIN)/reops lab up --hosts $(HOSTS) --dir $(LAB)
	@if [ "$(GUESTS)" != 0 ]; then \
	  set -e; mkdir -p -m 700 $(GHOME); root=$$(mktemp -d /tmp/reops-q.XXXXXX); \
	  printf '[hypervisors.local]\nuri = "qemu:///embed?root=%s"\n\n[machines]\nip_timeout = 90\n' \
	    "$$root" > $(GHOME)/config.toml; \
	  $(GUEST_ENV) $(BIN)/reops images build tiny --cache $(IMAGE_CACHE); \
	  $(GUEST_ENV) $(BIN)/reops types add guest -d "tiny guests of make run"; \
	  $(GUEST_ENV) $(BIN)/reops systems create guest --preset tiny --image tiny --count $(GUESTS); \
	fi
	$(if $(filter-out 0,$(GUESTS)),$(GUEST_ENV)) $(BIN)/reops run flows/examples/fleet_report.py --inventory $(LAB)/inventory.toml --selector all --save fleet.parquet $(if $(filter-out 0,$(GUESTS)),--systems 'typed:guest & running')
	@echo "lab is still up: try  $(BIN)/reops exec -i $(LAB)/inventory.toml all -- uptime ; stop it with  make lab-down"
	@if [ "$(GUESTS)" != 0 ]; then echo "guests too: REOPS_HOME=$(GHOME) $(BIN)/reops systems ls"; fi

lab-up: venv
	$(BIN)/reops lab up --hosts $(HOSTS) --dir $(LAB)

# Destroys `make run GUESTS=N`'s guests (if any) and removes their QEMU root, then the lab.
lab-down: venv guests-down
	$(BIN)/reops lab down --dir $(LAB)

guests-down: venv
	@if [ -f $(GHOME)/config.toml ]; then \
	  $(GUEST_ENV) $(BIN)/reops systems destroy -f all; \
	  root=$$(sed -n 's/^uri = "qemu:\/\/\/embed?root=\(.*\)"$$/\1/p' $(GHOME)/config.toml); \
	  case "$$root" in /tmp/reops-q.*) rm -rf "$$root";; esac; \
	  rm -f $(GHOME)/config.toml; \
	fi

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
