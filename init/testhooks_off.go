//go:build !bulwarktest

package main

import "github.com/bulwarkvm/bulwark/internal/volume"

// testVolumeOptions changes nothing: the test image's build records the
// volumes' key material for its memory scan (testhooks.go).
func testVolumeOptions(*volume.Options) {}
