# bulwark: the two commands for a fresh machine are `make demo` and `make test`.
# Both install what they need first (make deps).

SHELL := /bin/bash
GO    ?= go
OUT   ?= out
MINIO := $(OUT)/tools/minio
PACKER := $(OUT)/tools/packer

# Debian packages: the kernel and firmware the image is built from and booted
# with, QEMU, the host tools the image build and the tests run (iptables is
# only the baseline of the firewall benchmark; postgresql is the real
# database behind the front door in its test; gcc lets the race detector,
# which needs cgo, check the concurrent module loader; tmux gives bulwarkctl's
# progress test a terminal; squashfs-tools makes the system image's file
# system, from packages the build fetches with apt-get download, and
# cryptsetup-bin's veritysetup checks its hash tree in the tests).
DEBS := linux-image-amd64 systemd-boot-efi ovmf qemu-system-x86 qemu-utils \
        e2fsprogs dosfstools mtools cryptsetup-bin squashfs-tools iproute2 nftables iputils-ping \
        dnsmasq-base swtpm swtpm-tools iptables postgresql tcpdump lz4 python3-cryptography age gcc tmux

export CGO_ENABLED := 0

.PHONY: all deps image demo test check unit fuzz qemutest minio packer packer-plugin packer-docs packertest bench-backup bench-boot bench-boot-compare bench-volumes bench-firewall bench-frontdoor bench-ipsec clean

all: image

# Installs only what is missing, so a second run takes a second.
deps:
	@missing=$$(for p in $(DEBS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(GO) mod download

image: deps
	$(GO) run ./image -out $(OUT) -qcow2

demo: image $(MINIO)
	$(GO) run ./qemu-tests/demo -out $(OUT)

# Everything CI runs: formatting, vet, unit tests, a short fuzz run, the
# image build (with its reproducibility check) and the QEMU tests.
test: deps check unit fuzz image qemutest packertest

check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd packer && $(GO) vet ./...
	@# The plugin's generated HCL2 spec and docs match its Config.
	cd packer && $(GO) generate ./... && rm -rf .docs && $(GO) tool packer-sdc renderdocs -src docs -partials website/content/partials -dst .docs >/dev/null 2>&1
	@git diff --exit-code --stat -- packer || { echo "packer/: generated files are stale; run make packer-docs and commit"; exit 1; }
	@# The CLI reference, one page per command, matches bulwarkctl's command
	@# definitions (new and removed pages count too).
	$(GO) run ./cmd/bulwarkctl gen-docs docs/cli >/dev/null
	@test -z "$$(git status --porcelain -- docs/cli)" || { git status --short -- docs/cli; echo "docs/cli/: generated pages are stale; run go run ./cmd/bulwarkctl gen-docs docs/cli and commit"; exit 1; }

# A real S3 server for the backup tests and the demo, built from the Go
# module proxy at the version tools/minio/go.mod pins (a few minutes the
# first time).
minio: $(MINIO)
$(MINIO): tools/minio/go.mod tools/minio/go.sum
	cd tools/minio && $(GO) build -o $(abspath $(MINIO)) github.com/minio/minio

# Packer v1.12.0 for the plugin's acceptance test, built from the Go module
# proxy at the version tools/packer/go.mod pins (a few minutes the first
# time).
packer: $(PACKER)
$(PACKER): tools/packer/go.mod tools/packer/go.sum
	cd tools/packer && $(GO) build -o $(abspath $(PACKER)) github.com/hashicorp/packer

# The plugin binary, and its generated HCL2 spec and docs.
packer-plugin:
	cd packer && $(GO) build -o $(abspath $(OUT))/packer-plugin-bulwark .
packer-docs:
	cd packer && $(GO) generate ./... && rm -rf .docs && $(GO) tool packer-sdc renderdocs -src docs -partials website/content/partials -dst .docs

# A real Packer installs the plugin, validates and builds the example
# template; the image boots under QEMU and equals the make path's.
packertest: deps $(PACKER)
	cd packer && $(GO) test -count=1 -timeout 30m -v ./... 2>&1 | tee $(abspath $(OUT))/packertest.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:'; \
	exit $${PIPESTATUS[0]}

unit: $(MINIO)
	$(GO) test -count=1 -timeout 20m ./internal/... ./init/... ./image/... ./cmd/...
	CGO_ENABLED=1 $(GO) test -race -count=1 ./internal/kmod/

# Budgets in executions, not seconds: with a wall-clock -fuzztime, Go 1.26's
# coordinator can report "context deadline exceeded" as a failure when a
# busy worker is still mid-input at the deadline (go.dev/issue/75804,
# fixed in Go 1.27). Each count is 10-15 s on two idle cores.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 200000x ./internal/config/
	$(GO) test -run '^$$' -fuzz FuzzRead -fuzztime 100000x -fuzzminimizetime 1s ./internal/luks2/
	$(GO) test -run '^$$' -fuzz FuzzLayout -fuzztime 20000x -fuzzminimizetime 1s ./internal/luks2/
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime 50000x -fuzzminimizetime 1s ./internal/backup/
	$(GO) test -run '^$$' -fuzz FuzzManifest -fuzztime 45000x -fuzzminimizetime 1s ./internal/backup/

qemutest:
	$(GO) test -count=1 -timeout 30m -v ./qemu-tests/... 2>&1 | tee $(OUT)/qemutest.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:'; \
	exit $${PIPESTATUS[0]}

bench-backup: deps
	$(GO) run ./bench/backupbench -mib 1024

# Init overhead under emulation: bulwark's init against a trivial init on
# the same kernel, in the same run (docs/performance.md).
bench-boot: image
	$(GO) test -run '^$$' -bench 'BootOverhead$$' -benchtime 20x -v -timeout 30m ./qemu-tests/

# The same overhead for several image directories in one run, to compare a
# change with the image before it: make bench-boot-compare IMAGES="/tmp/before out"
bench-boot-compare: deps
	BULWARK_BENCH_IMAGES="$(abspath $(IMAGES))" $(GO) test -run '^$$' -bench 'CompareImages$$' -benchtime 10x -v -timeout 60m ./qemu-tests/

# Volumes under emulation: our format+map against cryptsetup in the guest,
# and boot-to-ready with two 1 GiB volumes against none (docs/performance.md).
bench-volumes: image
	$(GO) test -run '^$$' -bench 'VolumeFormatMap|BootWithVolumes' -benchtime 3x -timeout 30m ./qemu-tests/

# Firewall: a 10,000-CIDR allowlist applied and replaced, against
# iptables-restore of the same rules; connection set-up with 1 and 10,000
# entries (docs/performance.md). Namespaces on the host, no QEMU.
bench-firewall: deps
	$(GO) test -run '^$$' -bench . -benchtime 20x ./internal/firewall/

# TLS front door: handshakes per second and bulk throughput, through the
# front door and straight to a TLS server, in one run (docs/performance.md).
bench-frontdoor:
	$(GO) test -run '^$$' -bench Handshakes -benchtime 1000x ./internal/frontdoor/
	$(GO) test -run '^$$' -bench Throughput -benchtime 10x ./internal/frontdoor/

# IPsec: time to SAs, key generation, ESP throughput between two nodes
# against plaintext between two test clients (docs/performance.md).
bench-ipsec: image
	$(GO) test -run '^$$' -bench IPsec -benchtime 1x -timeout 30m ./qemu-tests/

clean:
	rm -rf $(OUT)
