// Package version is the plugin's version, which Packer reads with the
// plugin's describe command. Packer installs release versions only, so
// this is never a -dev version.
package version

import "github.com/hashicorp/packer-plugin-sdk/version"

// Version is the plugin's release; keep it in step with the docs and the
// example template's required_plugins.
const Version = "0.1.0"

var PluginVersion = version.NewPluginVersion(Version, "", "")
