package bulwark

import (
	"context"
	"errors"
	"os"

	"github.com/hashicorp/hcl/v2/hcldec"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

// BuilderID names the builder in artifacts.
const BuilderID = "bulwarkvm.bulwark"

// Builder builds the image with internal/imagebuild, as make image does.
type Builder struct{ config Config }

func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

func (b *Builder) Prepare(raws ...interface{}) ([]string, []string, error) {
	warnings, err := b.config.Prepare(raws...)
	return nil, warnings, err
}

func (b *Builder) Run(ctx context.Context, ui packersdk.Ui, hook packersdk.Hook) (packersdk.Artifact, error) {
	o := b.config.opts
	if b.config.PackerForce {
		if err := os.RemoveAll(o.OutDir); err != nil {
			return nil, err
		}
	}
	ui.Say("Building the bulwark image (kernel " + o.KernelVersion + ") into " + o.OutDir)
	rep, err := imagebuild.Build(ctx, o)
	if err != nil {
		return nil, err
	}
	for _, a := range rep.Artifacts {
		ui.Message(a.Path + "  sha256:" + a.SHA256)
	}
	if len(rep.Artifacts) == 0 {
		return nil, errors.New("the build wrote no files")
	}
	return &Artifact{dir: o.OutDir, report: rep}, nil
}
