# Builds bulwark's node image with Packer: the same image, byte for byte,
# as `make image` from the same source tree and kernel.
#
#   packer init packer/example
#   packer build packer/example
packer {
  required_plugins {
    bulwark = {
      version = ">= 0.1.0"
      source  = "github.com/bulwarkvm/bulwark"
    }
  }
}

variable "output_directory" {
  type    = string
  default = "output-bulwark"
}

variable "cmdline_extra" {
  type        = string
  default     = ""
  description = "Arguments appended to the kernel command line."
}

source "bulwark" "node" {
  output_directory = var.output_directory
  # The bulwark source tree the init is built from: this repository.
  source_dir    = "${path.root}/../.."
  formats       = ["raw", "qcow2"]
  disk_size_mib = 128
  cmdline_extra = var.cmdline_extra
  # The verified system image (the node's /usr): these Debian packages and
  # the libraries they need. The same as the build's default, set here to
  # show where an extension's package goes.
  packages = ["postgresql-15", "postgresql-15-pgaudit"]
}

build {
  sources = ["source.bulwark.node"]
}
