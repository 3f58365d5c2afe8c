package backup

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// KeyBits is the size of the service key: exactly 3072 bits.
const KeyBits = 3072

// GenerateKey makes a new service key pair.
func GenerateKey() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, KeyBits)
}

// IDOf returns the key id of a public key.
func IDOf(pub *rsa.PublicKey) (KeyID, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return KeyID{}, fmt.Errorf("backup: encoding the public key: %w", err)
	}
	return sha256.Sum256(der), nil
}

// PublicKeyPEM and PrivateKeyPEM encode a key pair for files.
func PublicKeyPEM(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func PrivateKeyPEM(k *rsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePublicKey reads a PEM public key and checks that it is RSA-3072.
func ParsePublicKey(b []byte) (*rsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("backup: public key: no PEM \"PUBLIC KEY\" block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("backup: public key: %w", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("backup: public key is %T, not RSA", k)
	}
	if pub.N.BitLen() != KeyBits {
		return nil, fmt.Errorf("backup: public key has %d bits, not %d", pub.N.BitLen(), KeyBits)
	}
	return pub, nil
}

// ParsePrivateKey reads a PEM private key (PKCS#8 or PKCS#1) and checks
// that it is RSA-3072. Errors never include key bytes.
func ParsePrivateKey(b []byte) (*rsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("backup: private key: no PEM block")
	}
	var k any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("backup: private key: PEM block %q is not a private key", blk.Type)
	}
	if err != nil {
		return nil, errors.New("backup: private key: the PEM block does not parse")
	}
	priv, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("backup: private key is %T, not RSA", k)
	}
	return priv, nil
}

// Keyring holds the private keys a reader may use, by key id: after a key
// rotation, old backups still open with their old key.
type Keyring map[KeyID]*rsa.PrivateKey

// NewKeyring indexes private keys by their key ids.
func NewKeyring(keys ...*rsa.PrivateKey) (Keyring, error) {
	kr := Keyring{}
	for _, k := range keys {
		if k.N.BitLen() != KeyBits {
			return nil, fmt.Errorf("backup: private key has %d bits, not %d", k.N.BitLen(), KeyBits)
		}
		id, err := IDOf(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		kr[id] = k
	}
	return kr, nil
}

// UnknownKeyError says a segment was written for a key the reader lacks.
type UnknownKeyError struct{ ID KeyID }

func (e *UnknownKeyError) Error() string {
	return fmt.Sprintf("backup: the segment's key id %s is not among the private keys given", e.ID)
}
