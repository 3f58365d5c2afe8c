package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/kmod"
)

// modulesList is written by the image build (internal/imagebuild).
const modulesList = "/etc/bulwark/modules.list"

// loadModules loads the modules the image ships, dependencies first. A
// required module that fails is fatal; an optional one (CPU-specific
// acceleration) is a warning.
func loadModules(b *boot) (string, error) {
	raw, err := os.ReadFile(modulesList)
	if err != nil {
		return "", err
	}
	mods, err := kmod.ParseList(raw)
	if err != nil {
		return "", err
	}
	failed, err := kmod.LoadList(mods)
	if err != nil {
		return "", err
	}
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
		return "", fmt.Errorf("required modules failed: %s", strings.Join(fatal, ", "))
	}
	detail := fmt.Sprintf("%d modules", len(mods)-len(optional))
	if len(optional) > 0 {
		return detail, warning{fmt.Sprintf("(%d optional not loaded: %s)", len(optional), strings.Join(optional, " "))}
	}
	return detail, nil
}
