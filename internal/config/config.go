// Package config holds the node's configuration document: its schema, a
// strict parser and the validation of every field. The schema is described
// for users in docs/config.md; every example there is parsed by the tests.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// Version is the only schema version this build understands.
const Version = 1

// MaxSize bounds the document, so that a broken source cannot make the
// init read without end.
const MaxSize = 1 << 20

// Config is the whole node configuration.
type Config struct {
	// Version must be 1.
	Version int `json:"version"`
	// Hostname of the node (RFC 1123).
	Hostname string `json:"hostname"`
	// Network configures interfaces, addresses and routes.
	Network Network `json:"network"`
	// Volumes are the encrypted data volumes, one per data disk.
	Volumes []Volume `json:"volumes,omitempty"`
	// Workload is the service the node exists for (the database).
	Workload *Workload `json:"workload,omitempty"`
	// Firewall is the node's packet filter; left out, the defaults apply
	// (see Firewall).
	Firewall *Firewall `json:"firewall,omitempty"`
	// TLS holds the node's project-signed certificate; it enables the
	// front door and the management API.
	TLS *TLS `json:"tls,omitempty"`
	// FrontDoor lists the client ports the node serves over TLS.
	FrontDoor []FrontDoor `json:"front_door,omitempty"`
	// IPsec keys ESP with the service's other nodes.
	IPsec *IPsec `json:"ipsec,omitempty"`
	// Backup runs the backup encryptor (docs/backup-format.md).
	Backup *Backup `json:"backup,omitempty"`
}

// Backup configures the backup encryptor: what to back up, the service's
// public key to encrypt for, and the object store in the node's region.
type Backup struct {
	// Region is the node's region; the store must be in it.
	Region string `json:"region"`
	// PublicKey is the service's RSA-3072 public key, PEM (PKIX). The
	// private key never enters the node.
	PublicKey string `json:"public_key"`
	// Store is where the encrypted objects go: exactly one of Dir and S3.
	Store BackupStore `json:"store"`
	// SegmentMiB is the plaintext size of a segment; default 64.
	SegmentMiB int `json:"segment_mib,omitempty"`
	// IntervalSeconds runs every source on this interval (60 to 604800);
	// 0 means on request only (management API).
	IntervalSeconds int `json:"interval_seconds,omitempty"`
	// FinalOnShutdown runs one more round at shutdown, after the workload
	// has stopped and before the volumes are crypto-erased.
	FinalOnShutdown bool `json:"final_on_shutdown,omitempty"`
	// Sources are backed up in order at each run.
	Sources []BackupSource `json:"sources"`
}

// BackupStore names the object store.
type BackupStore struct {
	// Dir is a directory on the node (a data volume path); mostly for
	// tests and for copying out by other means.
	Dir string `json:"dir,omitempty"`
	S3  *S3    `json:"s3,omitempty"`
}

// S3 is a bucket of an S3-compatible service.
type S3 struct {
	// Endpoint is https://host[:port]; the host must be reachable through
	// firewall.egress.backup.
	Endpoint string `json:"endpoint"`
	// AllowHTTP accepts a plain http endpoint (a private test network).
	AllowHTTP bool   `json:"allow_http,omitempty"`
	Bucket    string `json:"bucket"`
	Prefix    string `json:"prefix,omitempty"`
	// Credentials is "static" (the default: AccessKey, SecretKey and,
	// for temporary STS credentials, SessionToken) or "instance_role"
	// (the EC2 instance role's, from the metadata service through
	// IMDSv2, which firewall.egress.metadata must open to the backup
	// process's uid; the three static fields are then absent).
	Credentials  string `json:"credentials,omitempty"`
	AccessKey    string `json:"access_key,omitempty"`
	SecretKey    string `json:"secret_key,omitempty"`
	SessionToken string `json:"session_token,omitempty"`
	// Addressing is "path" (the default: https://host/bucket/key, what
	// MinIO and most S3-compatible services need) or "virtual"
	// (virtual-hosted: https://bucket.host/key).
	Addressing string `json:"addressing,omitempty"`
	// ExpectedBucketOwner is the AWS account id (12 digits) that must own
	// the bucket, sent signed as x-amz-expected-bucket-owner on every
	// request.
	ExpectedBucketOwner string `json:"expected_bucket_owner,omitempty"`
	// CA holds the PEM certificates that anchor the endpoint's TLS
	// certificate: the image carries no system root store, so an https
	// endpoint names its trust anchors here.
	CA string `json:"ca,omitempty"`
}

// BackupSource is one thing to back up.
type BackupSource struct {
	// Kind is "tree" (a directory, as a tar stream), "command" (the
	// standard output of Command, run as the workload's user) or "spool"
	// (each file in a directory as its own backup, removed once stored).
	Kind    string   `json:"kind"`
	Path    string   `json:"path,omitempty"`
	Command []string `json:"command,omitempty"`
}

// EffectiveSegmentMiB is the segment size with its default.
func (b *Backup) EffectiveSegmentMiB() int {
	if b.SegmentMiB == 0 {
		return 64
	}
	return b.SegmentMiB
}

// IPsec is the node-to-node encryption: every packet between this node's
// address and a peer's is ESP, keyed over mutual TLS with the node
// certificates (docs/ipsec-keying.md).
type IPsec struct {
	// Address is this node's address towards its peers.
	Address string `json:"address"`
	// Peers are the service's other nodes: the name their certificate
	// must carry, and their address.
	Peers []Peer `json:"peers"`
	// RekeySeconds is the time between key generations; default 3600.
	RekeySeconds int `json:"rekey_seconds,omitempty"`
	// GraceSeconds is how long an old generation's SAs stay after a
	// rekey; default 30.
	GraceSeconds int `json:"grace_seconds,omitempty"`
}

// Peer is another node of the service.
type Peer struct {
	Name    string `json:"name"`
	Address string `json:"address"`
}

// TLS is the node's identity in the project PKI.
type TLS struct {
	// CA is the project CA certificate (PEM): it signs this node's
	// certificate and every management client's.
	CA string `json:"ca"`
	// Certificate and Key are the node's certificate and private key
	// (PEM), issued by `bulwarkctl ca issue node`.
	Certificate string `json:"certificate"`
	Key         string `json:"key"`
	// RevokedSerials are certificate serial numbers (hex) the node
	// refuses, whatever their validity.
	RevokedSerials []string `json:"revoked_serials,omitempty"`
}

// FrontDoor is one client port served over TLS and proxied to the
// workload.
type FrontDoor struct {
	// Port is one of firewall.client_ports.
	Port int `json:"port"`
	// Protocol is "postgres" (SSLRequest, direct TLS with ALPN
	// "postgresql", and a PostgreSQL error for plaintext) or "tls"
	// (TLS from the first byte).
	Protocol string `json:"protocol"`
	// Backend is where the workload listens: "127.0.0.1:5433", "[::1]:5433"
	// or "unix:/run/postgresql/.s.PGSQL.5433".
	Backend string `json:"backend"`
	// MaxPerSource bounds the connections one client address may hold
	// open; default 64.
	MaxPerSource int `json:"max_per_source,omitempty"`
	// MaxConnections bounds the connections from all clients together;
	// default 1024, and never more than the node's descriptor budget
	// allows.
	MaxConnections int `json:"max_connections,omitempty"`
	// IdleTimeoutSeconds closes a connection that carried nothing either
	// way for that long; default 1800.
	IdleTimeoutSeconds int `json:"idle_timeout_seconds,omitempty"`
}

// Firewall is the node's policy: default deny in both directions, with the
// openings listed here. Address lists take network prefixes or single
// addresses.
type Firewall struct {
	// ClientPorts are the TCP ports clients connect to; default [5432].
	ClientPorts []int `json:"client_ports,omitempty"`
	// Clients is the client allowlist. Left out it is 0.0.0.0/0 and ::/0
	// (anyone); an explicit empty list admits no client.
	Clients *[]string `json:"clients,omitempty"`
	// VPCNetworks, when given, switch on VPC mode: clients must come from
	// these (private) networks and from the allowlist.
	VPCNetworks []string `json:"vpc_networks,omitempty"`
	// Peers are the addresses of the service's other nodes.
	Peers []string `json:"peers,omitempty"`
	// PeerPorts are the service's internal TCP ports (replication),
	// open to peers only.
	PeerPorts []int `json:"peer_ports,omitempty"`
	// KeyingPort is the TCP port of IPsec keying between peers; default
	// 7443.
	KeyingPort int `json:"keying_port,omitempty"`
	// ManagementPort is the TCP port of the management API; default 9443.
	ManagementPort int `json:"management_port,omitempty"`
	// ManagementSources may reach the management port.
	ManagementSources []string `json:"management_sources,omitempty"`
	// Egress lists where new outbound connections may go, besides peers.
	Egress Egress `json:"egress"`
	// Blocked is what happens to a refused connection: "reject" (default:
	// TCP reset or ICMP administratively prohibited, so clients fail fast)
	// or "drop".
	Blocked string `json:"blocked,omitempty"`
}

// Egress names the destinations of new outbound connections.
type Egress struct {
	// Backup endpoints (object storage in the node's region).
	Backup []Endpoint `json:"backup,omitempty"`
	// DNS and NTP servers (UDP and TCP 53; UDP 123).
	DNS []string `json:"dns,omitempty"`
	NTP []string `json:"ntp,omitempty"`
	// Metadata opens the cloud metadata service to one local user. Left
	// out, no process on the node reaches it.
	Metadata *Metadata `json:"metadata,omitempty"`
}

// Metadata is the cloud metadata service (instance identity, role
// credentials): an address and TCP port that only the sockets of one uid
// may connect to. It hands out the instance's credentials to whoever
// asks, so it is closed unless a config names the one user that needs it.
type Metadata struct {
	// Address is the service's IP address, such as 169.254.169.254 or
	// fd00:ec2::254; a single address, not a prefix.
	Address string `json:"address"`
	// Port is its TCP port (80 at the major clouds).
	Port int `json:"port"`
	// UID is the only user whose connections may go there (0 to 65534;
	// 0 is the init itself and every root process).
	UID *int `json:"uid"`
}

// Endpoint is a destination network or address and a TCP port.
type Endpoint struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
}

// Workload is the program the node runs once its volumes are mounted: the
// database server. It runs as an unprivileged user, owns the data volumes,
// and is stopped before they are erased at shutdown.
type Workload struct {
	// Command is the program (an absolute path inside the image) and its
	// arguments.
	Command []string `json:"command"`
	// UID and GID the workload runs as; not root.
	UID int `json:"uid"`
	GID int `json:"gid"`
}

// Volume is one encrypted data volume: a whole data disk, found by its
// serial number or its /dev/disk/by-id name, given a fresh key at every
// boot and mounted at Mount.
type Volume struct {
	// Name identifies the volume in logs and in the device-mapper name
	// (bulwark-<name>).
	Name string `json:"name"`
	// Serial is the disk's serial number as the hypervisor reports it
	// (QEMU's serial= option, a cloud volume id).
	Serial string `json:"serial,omitempty"`
	// ByID is the disk's name under /dev/disk/by-id, such as
	// "virtio-data0" or "nvme-Amazon_Elastic_Block_Store_vol0123".
	ByID string `json:"by_id,omitempty"`
	// Mount is the absolute path the file system is mounted at.
	Mount string `json:"mount"`
	// Discard passes discards (TRIM) through the encryption. Off by
	// default: discarded blocks reveal which parts of the disk hold data.
	Discard bool `json:"discard,omitempty"`
}

// Network is the node's network configuration.
type Network struct {
	Interfaces []Interface `json:"interfaces,omitempty"`
	Routes     []Route     `json:"routes,omitempty"`
}

// Interface configures one network interface, named as the kernel names it.
type Interface struct {
	Name string `json:"name"`
	// MTU, or 0 to keep the driver's default.
	MTU int `json:"mtu,omitempty"`
	// Addresses are static addresses with their prefix length, such as
	// "10.0.0.2/24" or "fd00::2/64".
	Addresses []string `json:"addresses,omitempty"`
	// DHCP4 asks a DHCPv4 server for the IPv4 address, routes and MTU.
	DHCP4 bool `json:"dhcp4,omitempty"`
}

// Route is a static route.
type Route struct {
	// To is the destination prefix, such as "0.0.0.0/0".
	To string `json:"to"`
	// Via is the gateway address; empty for an on-link route.
	Via string `json:"via,omitempty"`
	// Interface names the outgoing interface; required for on-link routes.
	Interface string `json:"interface,omitempty"`
}

// Parse decodes and validates a configuration document. The error names the
// offending field by its path in the document.
func Parse(doc []byte) (*Config, error) {
	if len(doc) == 0 {
		return nil, errors.New("config: the document is empty")
	}
	if len(doc) > MaxSize {
		return nil, fmt.Errorf("config: the document is %d bytes; the limit is %d", len(doc), MaxSize)
	}
	if err := checkShape(doc, reflect.TypeOf(Config{})); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &c, nil
}

// Digest is the SHA-256 of the document as read, which the readiness report
// and (later) the audit log and attestation name.
func Digest(doc []byte) string {
	sum := sha256.Sum256(doc)
	return hex.EncodeToString(sum[:])
}
