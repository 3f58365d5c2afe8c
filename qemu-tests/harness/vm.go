package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bulwarkvm/bulwark/internal/proc"
)

// Firmware for UEFI boots (Debian's ovmf package).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Image locates a built image (make image writes out/).
type Image struct {
	Kernel, Initramfs, Disk string
	// System is the system image (system.img) a direct kernel boot
	// attaches; Cmdline carries its root hash.
	System  string
	Cmdline string
}

// ImageFromDir returns the image in dir; BULWARK_OUT overrides the default
// ../out (relative to qemu-tests/).
func ImageFromDir(dir string) (Image, error) {
	if env := os.Getenv("BULWARK_OUT"); env != "" {
		dir = env
	}
	img := Image{
		Kernel:    filepath.Join(dir, "vmlinuz"),
		Initramfs: filepath.Join(dir, "initramfs.img"),
		Disk:      filepath.Join(dir, "bulwark.img"),
		System:    filepath.Join(dir, "system.img"),
	}
	for _, f := range []string{img.Kernel, img.Initramfs, img.Disk, img.System} {
		if _, err := os.Stat(f); err != nil {
			return img, fmt.Errorf("image not built (run make image): %w", err)
		}
	}
	var rep struct {
		Cmdline string `json:"cmdline"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "build-report.json")); err == nil {
		_ = json.Unmarshal(b, &rep)
	}
	img.Cmdline = rep.Cmdline
	if !strings.Contains(img.Cmdline, "bulwark.usrhash=") {
		return img, fmt.Errorf("%s: the build report's command line %q has no system image root hash (run make image)", dir, img.Cmdline)
	}
	return img, nil
}

// Options describe one VM.
type Options struct {
	Name  string
	Image Image
	// UEFI boots the GPT disk through OVMF and systemd-boot instead of
	// handing QEMU the kernel and initramfs.
	UEFI bool
	// Config is passed as fw_cfg opt/bulwark/config, or on a vfat volume
	// labelled BULWARKCFG when ConfigVolume is set.
	Config       []byte
	ConfigVolume bool
	// Disks are raw image files attached as virtio disks, with serials
	// data0, data1, ...
	Disks []string
	// Net puts one NIC on the test bridge; nil means no NIC at all.
	Net *Net
	MAC string
	// Pcap captures the NIC's traffic to Dir()/nic0.pcap.
	Pcap bool
	// ExpectFatal: the test expects "bulwark: FATAL"; WaitFor does not
	// give up when it appears.
	ExpectFatal bool
	MemoryMiB   int
	ExtraArgs   []string
	// NoSystemDisk leaves the system image off a direct kernel boot
	// (which attaches Image.System as the read-only disk bulwark-system).
	NoSystemDisk bool
	// Echo, when set, receives each console line as it arrives.
	Echo io.Writer
	// TPM attaches a TPM 2.0 (tpm-crb) backed by an swtpm process that the
	// harness starts and stops with the VM.
	TPM bool
}

// VM is a running QEMU.
type VM struct {
	t       T
	opts    Options
	dir     string
	tap     string // the NIC's tap device in the test network
	cmd     *exec.Cmd
	started time.Time
	exited  chan struct{}
	exitErr error

	mu     sync.Mutex
	cond   *sync.Cond
	lines  []Line
	stderr bytes.Buffer
}

// Line is one console line with the time it arrived.
type Line struct {
	Text string
	At   time.Duration // since QEMU was started
}

// Start boots a VM. It is killed and its files removed when the test ends;
// if the test failed, its console log is printed first.
func Start(t T, o Options) *VM {
	t.Helper()
	if o.Name == "" {
		o.Name = "node"
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 512
	}
	// Short path: QMP's unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "bwvm-")
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{t: t, opts: o, dir: dir, exited: make(chan struct{})}
	vm.cond = sync.NewCond(&vm.mu)
	addCleanup(t, func() {
		vm.kill()
		if t.Failed() {
			t.Logf("console of %s:\n%s\nqemu stderr:\n%s", o.Name, vm.Console(), vm.stderrText())
		}
		os.RemoveAll(dir)
	})
	args, err := vm.args()
	if err != nil {
		t.Fatal(err)
	}
	name := "qemu-system-x86_64"
	if o.Net != nil {
		// QEMU opens the tap device inside the test's namespace.
		args = append([]string{"netns", "exec", o.Net.NS, name}, args...)
		name = "ip"
	}
	vm.cmd = exec.Command(name, args...)
	// QEMU dies with the test binary, whatever kills it.
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	vm.cmd.Stderr = &lockedWriter{mu: &vm.mu, w: &vm.stderr}
	vm.started = time.Now()
	if err := proc.StartPinned(vm.cmd, vm.exited); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	go vm.readConsole(stdout)
	return vm
}

func (vm *VM) args() ([]string, error) {
	o := vm.opts
	a := []string{
		"-name", o.Name,
		"-machine", "q35",
		// TCG emulates AES-NI and PCLMULQDQ with -cpu max.
		"-cpu", "max",
		"-smp", "2",
		"-m", fmt.Sprint(o.MemoryMiB),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-serial", "stdio",
		"-no-reboot",
		"-qmp", "unix:" + vm.qmpPath() + ",server=on,wait=off",
		"-device", "virtio-rng-pci",
	}
	if o.UEFI {
		vars := filepath.Join(vm.dir, "OVMF_VARS.fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			return nil, err
		}
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars,
			// snapshot=on: the VM's writes never reach the built image.
			"-drive", "if=none,id=boot,format=raw,snapshot=on,file="+o.Image.Disk,
			"-device", "virtio-blk-pci,drive=boot,serial=boot,bootindex=0",
		)
	} else {
		a = append(a, "-kernel", o.Image.Kernel, "-initrd", o.Image.Initramfs, "-append", o.Image.Cmdline)
	}
	if o.Config != nil {
		cfg := filepath.Join(vm.dir, "config.json")
		if err := os.WriteFile(cfg, o.Config, 0o600); err != nil {
			return nil, err
		}
		if o.ConfigVolume {
			vol := filepath.Join(vm.dir, "config.vfat")
			if err := MakeConfigVolume(vol, cfg); err != nil {
				return nil, err
			}
			a = append(a, "-drive", "if=none,id=cfg,format=raw,readonly=on,file="+vol,
				"-device", "virtio-blk-pci,drive=cfg,serial=config")
		} else {
			a = append(a, "-fw_cfg", "name=opt/bulwark/config,file="+cfg)
		}
	}
	for i, d := range o.Disks {
		a = append(a, "-drive", fmt.Sprintf("if=none,id=data%d,format=raw,file=%s", i, d),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=data%d,serial=data%d", i, i))
	}
	// After the data disks, so that their names stay vda, vdb, ...
	if !o.UEFI && !o.NoSystemDisk && o.Image.System != "" {
		a = append(a, "-drive", "if=none,id=sys,format=raw,readonly=on,file="+o.Image.System,
			"-device", "virtio-blk-pci,drive=sys,serial=bulwark-system")
	}
	if o.TPM {
		sock, err := vm.startSwtpm()
		if err != nil {
			return nil, err
		}
		a = append(a, "-chardev", "socket,id=chrtpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0")
	}
	if o.Net != nil {
		tap := o.Net.tap()
		vm.tap = tap
		mac := o.MAC
		if mac == "" {
			mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", os.Getpid()&0xff, seq.Add(1)&0xff, len(o.Name))
		}
		a = append(a, "-netdev", "tap,id=nic0,ifname="+tap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=nic0,mac="+mac)
		if o.Pcap {
			a = append(a, "-object", "filter-dump,id=dump0,netdev=nic0,file="+vm.PcapPath())
		}
	} else {
		a = append(a, "-nic", "none")
	}
	return append(a, o.ExtraArgs...), nil
}

// startSwtpm starts a TPM 2.0 emulator with its state in the VM's directory
// and returns its control socket. It ends with the test.
func (vm *VM) startSwtpm() (string, error) {
	state := filepath.Join(vm.dir, "tpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", err
	}
	sock := filepath.Join(vm.dir, "swtpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+sock, "--flags", "startup-clear")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = &lockedWriter{mu: &vm.mu, w: &vm.stderr}
	stopped := make(chan struct{})
	if err := proc.StartPinned(cmd, stopped); err != nil {
		return "", fmt.Errorf("starting swtpm: %w", err)
	}
	addCleanup(vm.t, func() { cmd.Process.Kill(); cmd.Wait(); close(stopped) })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("swtpm did not create %s", sock)
}

// Dir is the VM's private directory (pcap files, firmware variables).
func (vm *VM) Dir() string { return vm.dir }

// PcapPath is where the NIC's capture is written when Options.Pcap is set.
func (vm *VM) PcapPath() string { return filepath.Join(vm.dir, "nic0.pcap") }

func (vm *VM) qmpPath() string { return filepath.Join(vm.dir, "qmp.sock") }

func (vm *VM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		text := strings.TrimRight(sc.Text(), "\r")
		vm.mu.Lock()
		vm.lines = append(vm.lines, Line{Text: text, At: time.Since(vm.started)})
		if vm.opts.Echo != nil {
			fmt.Fprintf(vm.opts.Echo, "  | %s\n", text)
		}
		vm.cond.Broadcast()
		vm.mu.Unlock()
	}
	err := vm.cmd.Wait()
	vm.mu.Lock()
	vm.exitErr = err
	close(vm.exited)
	vm.cond.Broadcast()
	vm.mu.Unlock()
}

// WaitFor waits until a console line matches the regular expression and
// returns it. It fails when the timeout passes, when QEMU exits first, or
// when the node prints a FATAL line (unless Options.ExpectFatal).
func (vm *VM) WaitFor(pattern string, timeout time.Duration) (Line, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return Line{}, err
	}
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		vm.mu.Lock()
		vm.cond.Broadcast()
		vm.mu.Unlock()
	})
	defer timer.Stop()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for i := 0; ; {
		for ; i < len(vm.lines); i++ {
			l := vm.lines[i]
			if re.MatchString(l.Text) {
				return l, nil
			}
			if strings.Contains(l.Text, "bulwark: FATAL:") && !vm.opts.ExpectFatal {
				return Line{}, fmt.Errorf("%s: waiting for %q, the node failed: %s", vm.opts.Name, pattern, l.Text)
			}
		}
		select {
		case <-vm.exited:
			return Line{}, fmt.Errorf("%s: QEMU exited (%v) before %q appeared", vm.opts.Name, vm.exitErr, pattern)
		default:
		}
		if time.Now().After(deadline) {
			return Line{}, fmt.Errorf("%s: %q did not appear within %v", vm.opts.Name, pattern, timeout)
		}
		vm.cond.Wait()
	}
}

// MustWaitFor is WaitFor that fails the test.
func (vm *VM) MustWaitFor(pattern string, timeout time.Duration) Line {
	vm.t.Helper()
	l, err := vm.WaitFor(pattern, timeout)
	if err != nil {
		vm.t.Fatal(err)
	}
	return l
}

// Console returns the whole console output so far.
func (vm *VM) Console() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	var b strings.Builder
	for _, l := range vm.lines {
		fmt.Fprintf(&b, "[%7.3fs] %s\n", l.At.Seconds(), l.Text)
	}
	return b.String()
}

// Lines returns the console lines so far.
func (vm *VM) Lines() []Line {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Line(nil), vm.lines...)
}

func (vm *VM) stderrText() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.stderr.String()
}

// PowerButton presses the ACPI power button through QMP.
func (vm *VM) PowerButton() error {
	return vm.qmp("system_powerdown")
}

// PowerOff presses the power button, waits for "bulwark: powered off
// cleanly" and for QEMU to exit.
func (vm *VM) PowerOff(timeout time.Duration) error {
	if err := vm.PowerButton(); err != nil {
		return err
	}
	if _, err := vm.WaitFor(`^bulwark: powered off cleanly$`, timeout); err != nil {
		return err
	}
	return vm.WaitExit(timeout)
}

// WaitExit waits for QEMU to exit and returns its error.
func (vm *VM) WaitExit(timeout time.Duration) error {
	select {
	case <-vm.exited:
		vm.mu.Lock()
		defer vm.mu.Unlock()
		return vm.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("%s: QEMU still running after %v", vm.opts.Name, timeout)
	}
}

// Capture records the VM's NIC traffic with tcpdump, on its tap device in
// the test network, into path (pcap, Ethernet frames). The returned stop
// function ends the capture and waits until the file is complete; it also
// runs when the test ends.
func (vm *VM) Capture(path string) (stop func()) {
	vm.t.Helper()
	if vm.tap == "" {
		vm.t.Fatal("harness: Capture needs a VM with Net")
	}
	cmd := exec.Command("ip", "netns", "exec", vm.opts.Net.NS, "tcpdump", "-i", vm.tap, "-U", "-s", "0", "-w", path)
	var mu sync.Mutex
	var errb bytes.Buffer
	cmd.Stderr = &lockedWriter{mu: &mu, w: &errb}
	if err := proc.StartPinned(cmd, vm.exited); err != nil {
		vm.t.Fatalf("tcpdump: %v", err)
	}
	// tcpdump says "listening on" once it captures.
	for i := 0; i < 100; i++ {
		mu.Lock()
		up := strings.Contains(errb.String(), "listening on")
		mu.Unlock()
		if up {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGINT)
			cmd.Wait()
		})
	}
	addCleanup(vm.t, stop)
	return stop
}

// Kill stops QEMU at once, as a host crash or a cloud "terminate" would:
// the node gets no chance to shut down.
func (vm *VM) Kill() { vm.kill() }

func (vm *VM) kill() {
	if vm.cmd == nil || vm.cmd.Process == nil {
		return
	}
	select {
	case <-vm.exited:
		return
	default:
	}
	vm.cmd.Process.Kill()
	select {
	case <-vm.exited:
	case <-time.After(10 * time.Second):
	}
}

// qmp runs one QMP command.
// DumpMemory writes the guest's physical memory to path (an ELF core
// file, QMP dump-guest-memory), for tests that look for what the node
// must never hold.
func (vm *VM) DumpMemory(path string) error {
	return vm.qmpArgs("dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + path})
}

func (vm *VM) qmp(command string) error { return vm.qmpArgs(command, nil) }

func (vm *VM) qmpArgs(command string, args map[string]any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", vm.qmpPath())
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	for _, c := range []string{"qmp_capabilities", command} {
		req := map[string]any{"execute": c}
		if c == command && args != nil {
			req["arguments"] = args
		}
		b, _ := json.Marshal(req)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("qmp %s: %w", c, err)
		}
		for {
			var resp map[string]any
			if err := dec.Decode(&resp); err != nil {
				return fmt.Errorf("qmp %s: %w", c, err)
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("qmp %s: %v", c, e)
			}
			if _, ok := resp["return"]; ok {
				break
			}
			// An asynchronous event; keep reading.
		}
	}
	return nil
}

// MakeConfigVolume writes a vfat image labelled BULWARKCFG holding the
// config file as config.json (dosfstools and mtools, installed by make deps).
func MakeConfigVolume(dst, configFile string) error {
	steps := [][]string{
		{"mkfs.fat", "-C", "-n", "BULWARKCFG", dst, "2048"},
		{"mcopy", "-i", dst, configFile, "::/config.json"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
