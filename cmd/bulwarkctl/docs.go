package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// genDocsCmd writes docs/cli/: one markdown page per command, generated
// from the command definitions (make check regenerates it and fails when
// the committed pages differ). Hidden: it is for the build, not operators.
func genDocsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-docs DIR",
		Short:  "Write the command reference (one markdown page per command) into DIR",
		Hidden: true,
		Args:   exactArgs(1, "give the output directory (docs/cli)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeDocs(cmd.Root(), args[0])
		},
	}
}

// docPages renders every command's page: file name to contents. The
// pages carry no date (DisableAutoGenTag), so the same tree gives the
// same bytes.
func docPages(root *cobra.Command) (map[string][]byte, error) {
	pages := map[string][]byte{}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if !c.IsAvailableCommand() && c != root {
			return nil
		}
		c.DisableAutoGenTag = true
		var b bytes.Buffer
		if err := doc.GenMarkdownCustom(c, &b, func(s string) string { return s }); err != nil {
			return err
		}
		name := strings.ReplaceAll(c.CommandPath(), " ", "_") + ".md"
		pages[name] = b.Bytes()
		for _, s := range c.Commands() {
			if err := walk(s); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return nil, err
	}
	return pages, nil
}

// writeDocs replaces the generated pages in dir: pages of commands that
// are gone are removed, so a stale page cannot stay behind.
func writeDocs(root *cobra.Command, dir string) error {
	pages, err := docPages(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "bulwarkctl*.md"))
	for _, f := range old {
		if _, ok := pages[filepath.Base(f)]; !ok {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	for name, b := range pages {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(root.OutOrStdout(), "wrote %d pages to %s\n", len(pages), dir)
	return nil
}
