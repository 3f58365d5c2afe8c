// Command packer-plugin-bulwark is a Packer plugin with one builder,
// source type "bulwark", that builds bulwark's node image with the same
// library as `make image` (internal/imagebuild), so that the same inputs
// give the same bytes by either path.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"

	"github.com/bulwarkvm/bulwark/packer/builder/bulwark"
	"github.com/bulwarkvm/bulwark/packer/version"
)

func main() {
	pps := plugin.NewSet()
	pps.RegisterBuilder(plugin.DEFAULT_NAME, new(bulwark.Builder))
	pps.SetVersion(version.PluginVersion)
	if err := pps.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
