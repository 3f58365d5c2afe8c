// Command bulwarkctl is the operator's CLI. Exit codes: 0 success, 1 the
// operation failed (for example an invalid config), 2 bad usage.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

const usage = `usage: bulwarkctl COMMAND

commands:
  image build [flags]   build the node image into out/ (flags: bulwarkctl image build -h)
  config check FILE     validate a node config exactly as the node will
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] + " " + args[1] {
	case "image build":
		if err := imagebuild.Main(context.Background(), args[2:], stdout); err != nil {
			fmt.Fprintln(stderr, "bulwarkctl image build:", err)
			return 1
		}
		return 0
	case "config check":
		if len(args) != 3 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		return configCheck(args[2], stdout, stderr)
	}
	fmt.Fprintf(stderr, "bulwarkctl: unknown command %q\n%s", args[0]+" "+args[1], usage)
	return 2
}

func configCheck(path string, stdout, stderr io.Writer) int {
	doc, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(stderr, "bulwarkctl config check:", err)
		return 1
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid (version %d, hostname %s, %d interfaces, sha256 %s)\n",
		path, cfg.Version, cfg.Hostname, len(cfg.Network.Interfaces), config.Digest(doc))
	return 0
}
