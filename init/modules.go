package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/kmod"
)

// modulesList is written by the image build (internal/imagebuild).
const modulesList = "/etc/bulwark/modules.list"

// loadModules loads the modules the image ships, dependencies first: the
// ones the early stages need now; in the background while config,
// firewall and network run, first the system image's (dm-verity,
// squashfs), which the system image stage waits for alone
// (awaitSystemImageModules), then the ones only the volumes and IPsec
// stages need (dm-crypt, ext4, XFRM, ESP and their ciphers), which those
// stages wait for (awaitModules) and which may still load after the usr
// stage has covered the initramfs's /usr. The config volume's file systems load only
// when there is a config volume (loadOnDemand). A required module that
// fails is fatal; an optional one (CPU-specific acceleration) is a warning.
func loadModules(b *boot) (string, error) {
	raw, err := os.ReadFile(modulesList)
	if err != nil {
		return "", err
	}
	mods, err := kmod.ParseList(raw)
	if err != nil {
		return "", err
	}
	dir, err := kmod.RunningKernelDir()
	if err != nil {
		return "", err
	}
	// The usr stage covers the initramfs's /usr (and so /lib/modules)
	// with the system image, possibly while the background modules still
	// load: the loader reaches the modules through a descriptor of their
	// directory, which the mount does not hide, rather than by name.
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("modules: %s: %w", dir, err)
	}
	if b.modules, err = kmod.NewLoader(fmt.Sprintf("/proc/self/fd/%d", fd)); err != nil {
		return "", err
	}
	early, onDemand, first, background := kmod.Split(mods)
	b.onDemand = onDemand
	detail, degraded, err := loadModuleSet(b, early, b.modules.LoadList)
	if err != nil {
		return "", err
	}
	b.bgModules = make(chan error, 1)
	b.firstModules = make(chan error, 1)
	b.goSafe("background modules", func() {
		sentFirst, sent := false, false
		defer func() {
			// A panic is still an answer for the stages waiting here;
			// goSafe then reports it and halts.
			if r := recover(); r != nil {
				err := fmt.Errorf("loading modules: panic: %v", r)
				if !sentFirst {
					b.firstModules <- err
				}
				if !sent {
					b.bgModules <- err
				}
				panic(r)
			}
		}()
		load := func(set []kmod.Module, what string) error {
			start := time.Now()
			d, _, err := loadModuleSet(b, set, b.modules.LoadListQuietly)
			if err == nil {
				b.log.Info(fmt.Sprintf("%s modules loaded: %s in %s", what, d, time.Since(start).Round(time.Millisecond)))
			}
			return err
		}
		err := load(first, "system image")
		b.firstModules <- err
		sentFirst = true
		if err == nil {
			err = load(background, "background")
		}
		b.bgModules <- err
		sent = true
	})
	detail = fmt.Sprintf("%s; in the background %d for the system image, then %d for volumes and IPsec; %d for a config volume when there is one", detail, len(first), len(background), len(onDemand))
	if degraded {
		return "", warning{detail}
	}
	return detail, nil
}

// loadOnDemand loads the config volume's file system modules; the config
// stage calls it only when it has found a config volume.
func (b *boot) loadOnDemand() error {
	start := time.Now()
	detail, _, err := loadModuleSet(b, b.onDemand, b.modules.LoadList)
	if err != nil {
		return err
	}
	b.log.Info(fmt.Sprintf("config volume modules loaded: %s in %s", detail, time.Since(start).Round(time.Millisecond)))
	return nil
}

// awaitModules waits for the background modules; the stages that need
// them call it, and a required module that failed fails that stage. Later
// calls return the same result.
func (b *boot) awaitModules() (time.Duration, error) { return await(b.bgModules) }

// awaitSystemImageModules waits for the first background modules only:
// dm-verity and squashfs, for the system image stage.
func (b *boot) awaitSystemImageModules() (time.Duration, error) { return await(b.firstModules) }

// await waits for the one result on ch and puts it back for later
// callers, saying how long it waited.
func await(ch chan error) (time.Duration, error) {
	start := time.Now()
	err := <-ch
	ch <- err
	return time.Since(start), err
}

// waitedNote tells the readiness report how long a stage waited for the
// background modules, when it did.
func waitedNote(d time.Duration) string {
	if d < time.Millisecond {
		return ""
	}
	return fmt.Sprintf("; waited %s for modules", d.Round(time.Millisecond))
}

// loadModuleSet loads mods and describes the result; degraded says an
// optional module is missing.
func loadModuleSet(b *boot, mods []kmod.Module, load func([]kmod.Module) map[string]error) (detail string, degraded bool, err error) {
	failed := load(mods)
	var fatal, optional []string
	for _, m := range mods {
		err, bad := failed[m.Name]
		switch {
		case !bad:
		case m.Optional:
			optional = append(optional, m.Name)
			b.log.Warn("optional module not loaded", "module", m.Name, "err", err)
		default:
			fatal = append(fatal, fmt.Sprintf("%s (%v)", m.Name, err))
		}
	}
	if len(fatal) > 0 {
		slices.Sort(fatal)
		return "", false, fmt.Errorf("required modules failed: %s", strings.Join(fatal, ", "))
	}
	detail = fmt.Sprintf("%d modules", len(mods)-len(optional))
	if len(optional) > 0 {
		detail += fmt.Sprintf(" (%d optional not loaded: %s)", len(optional), strings.Join(optional, " "))
	}
	return detail, len(optional) > 0, nil
}
