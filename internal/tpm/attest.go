package tpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// Measure extends the PCR with an event and appends it to the log.
func (t *TPM) Measure(e Event) error {
	v, err := e.Extended()
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(PCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: v[:]}}},
	}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: extending PCR %d with %s %q: %w", PCR, e.Kind, e.Name, err)
	}
	t.log = append(t.log, e)
	return nil
}

// Log returns the events measured so far, in order.
func (t *TPM) Log() []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Event(nil), t.log...)
}

// PCRValue reads the PCR's SHA-256 bank.
func (t *TPM) PCRValue() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rsp, err := tpm2.PCRRead{PCRSelectionIn: selection()}.Execute(t.t)
	if err != nil {
		return nil, fmt.Errorf("tpm: PCRRead: %w", err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		return nil, fmt.Errorf("tpm: PCRRead returned %d values", len(rsp.PCRValues.Digests))
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}

func selection() tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(PCR),
	}}}
}

// akTemplate is the attestation key: ECDSA P-256 with SHA-256, restricted
// to signing TPM-made structures (quotes), never leaving the TPM. Made
// from the endorsement hierarchy's seed with a fixed template, it is the
// same key at every boot of the same TPM, so it can be pinned per node.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// CreateAK loads the attestation key; its public part is kept for quotes.
func (t *TPM) CreateAK() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: creating the attestation key: %w", err)
	}
	t.ak = rsp.ObjectHandle
	t.akName = rsp.Name
	t.akPublic = tpm2.Marshal(akPublicOf(rsp))
	return nil
}

func akPublicOf(rsp *tpm2.CreatePrimaryResponse) tpm2.TPMTPublic {
	p, err := rsp.OutPublic.Contents()
	if err != nil {
		return tpm2.TPMTPublic{}
	}
	return *p
}

// AKPublic is the attestation key's TPMT_PUBLIC; AKFingerprint its
// SHA-256 in hex, the value an auditor pins.
func (t *TPM) AKPublic() []byte { return t.akPublic }

func AKFingerprint(akPublic []byte) string {
	s := sha256.Sum256(akPublic)
	return hex.EncodeToString(s[:])
}

// Quote is what the node answers an attestation request with.
type Quote struct {
	PCR       int     `json:"pcr"`
	PCRSHA256 string  `json:"pcr_sha256"` // hex, the PCR as read with the quote
	Attest    []byte  `json:"quote"`      // TPMS_ATTEST
	Signature []byte  `json:"signature"`  // TPMT_SIGNATURE
	AKPublic  []byte  `json:"ak_public"`  // TPMT_PUBLIC
	Events    []Event `json:"events"`
}

// Quote signs the PCR with the attestation key over the caller's nonce.
func (t *TPM) Quote(nonce []byte) (*Quote, error) {
	if len(nonce) < 16 || len(nonce) > 64 {
		return nil, fmt.Errorf("tpm: nonce of %d bytes; give 16 to 64", len(nonce))
	}
	pcr, err := t.PCRValue()
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.akPublic == nil {
		return nil, errors.New("tpm: no attestation key")
	}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: t.ak, Name: t.akName, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      selection(),
	}.Execute(t.t)
	if err != nil {
		return nil, fmt.Errorf("tpm: Quote: %w", err)
	}
	return &Quote{
		PCR: PCR, PCRSHA256: hex.EncodeToString(pcr),
		Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature),
		AKPublic: t.akPublic, Events: append([]Event(nil), t.log...),
	}, nil
}

// Verify checks a quote as an auditor does: the signature with the
// attestation key it carries (whose fingerprint must be pin, when pin is
// given), the nonce, the PCR selection, the PCR digest against the
// reported value, and the event log replayed to that value. It returns the
// AK fingerprint. Each failure names what did not match.
func Verify(q *Quote, nonce []byte, pin string) (string, error) {
	fp := AKFingerprint(q.AKPublic)
	if pin != "" && pin != fp {
		return fp, fmt.Errorf("attestation key %s is not the pinned key %s", fp, pin)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](q.AKPublic)
	if err != nil {
		return fp, fmt.Errorf("attestation key does not parse: %w", err)
	}
	if !pub.ObjectAttributes.Restricted || !pub.ObjectAttributes.SignEncrypt || !pub.ObjectAttributes.FixedTPM {
		return fp, errors.New("attestation key is not a restricted signing key fixed to its TPM")
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return fp, fmt.Errorf("attestation key: %w", err)
	}
	ek, ok := key.(*ecdsa.PublicKey)
	if !ok {
		return fp, fmt.Errorf("attestation key is %T, not ECDSA", key)
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil {
		return fp, fmt.Errorf("signature does not parse: %w", err)
	}
	es, err := sig.Signature.ECDSA()
	if err != nil {
		return fp, fmt.Errorf("signature is not ECDSA: %w", err)
	}
	digest := sha256.Sum256(q.Attest)
	r, s := new(big.Int).SetBytes(es.SignatureR.Buffer), new(big.Int).SetBytes(es.SignatureS.Buffer)
	if es.Hash != tpm2.TPMAlgSHA256 || !ecdsa.Verify(ek, digest[:], r, s) {
		return fp, errors.New("the quote's signature does not verify with the attestation key")
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		return fp, fmt.Errorf("quote does not parse: %w", err)
	}
	if att.Type != tpm2.TPMSTAttestQuote {
		return fp, errors.New("the signed structure is not a quote")
	}
	if !bytes.Equal(att.ExtraData.Buffer, nonce) {
		return fp, errors.New("the quote is not over this request's nonce (a replayed quote)")
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return fp, err
	}
	sel := info.PCRSelect.PCRSelections
	if len(sel) != 1 || sel[0].Hash != tpm2.TPMAlgSHA256 || !bytes.Equal(sel[0].PCRSelect, tpm2.PCClientCompatible.PCRs(PCR)) {
		return fp, fmt.Errorf("the quote does not cover exactly PCR %d (SHA-256)", PCR)
	}
	pcr, err := hex.DecodeString(q.PCRSHA256)
	if err != nil || len(pcr) != 32 {
		return fp, errors.New("the reported PCR value is not 32 bytes of hex")
	}
	if d := sha256.Sum256(pcr); !bytes.Equal(info.PCRDigest.Buffer, d[:]) {
		return fp, fmt.Errorf("the reported PCR %d value is not the one the TPM signed", PCR)
	}
	replayed, err := Replay(q.Events)
	if err != nil {
		return fp, fmt.Errorf("event log: %w", err)
	}
	if !bytes.Equal(replayed[:], pcr) {
		return fp, fmt.Errorf("the event log replays to %x, not to the signed PCR %d value %x (the log was altered)", replayed, PCR, pcr)
	}
	return fp, nil
}
