package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/bulwarkvm/bulwark/internal/audit"
)

// auditEcho prints each audit record on the console with every field it
// has in the log, so that the console, which the cloud keeps, is a copy of
// the log an off-node reader can verify: the record rebuilt from the line
// hashes to its hash, and its prev is the hash of the record before
// (docs/boot.md). The handler escapes the fields a peer chose (who, what).
func auditEcho(log *slog.Logger) func(audit.Record) {
	return func(r audit.Record) {
		log.Info("audit", auditAttrs(r)...)
	}
}

// auditAttrs are a record's fields as log attributes: seq, kind, who,
// what and result first, as the console has always shown them, then the
// rest in the record's own order (time, serial, prev, hash, and any field
// the record gains), taken from the record's JSON so that none is left out
// and each reads as it is stored and hashed. A field the JSON omits
// (serial without a certificate) is omitted here too.
func auditAttrs(r audit.Record) []any {
	attrs := []any{"seq", r.Seq, "kind", r.Kind, "who", r.Who, "what", r.What, "result", r.Result}
	j, err := json.Marshal(r)
	if err != nil {
		return append(attrs, "echo_error", err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // {
		return append(attrs, "echo_error", err.Error())
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return append(attrs, "echo_error", err.Error())
		}
		v, err := dec.Token()
		if err != nil {
			return append(attrs, "echo_error", err.Error())
		}
		switch k {
		case "seq", "kind", "who", "what", "result":
			continue
		}
		attrs = append(attrs, fmt.Sprint(k), fmt.Sprint(v))
	}
	return attrs
}
