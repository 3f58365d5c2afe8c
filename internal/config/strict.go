package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// checkShape walks the JSON document token by token against the Go type it
// will be decoded into, before any decoding happens. encoding/json alone
// reports unknown fields without their path, silently keeps the last of two
// duplicate keys, and names type errors without array indices; an operator
// fixing a config needs the exact path ("network.interfaces[1].mtu").
func checkShape(doc []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := walk(dec, t, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the end of the JSON document")
	}
	return nil
}

func walk(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err, path)
	}
	return walkValue(dec, tok, t, path)
}

func walkValue(dec *json.Decoder, tok json.Token, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if tok == nil {
		return fmt.Errorf("%s: null is not allowed; leave the field out instead", where(path))
	}
	switch t.Kind() {
	case reflect.Struct:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return typeError(path, "an object", tok)
		}
		fields := jsonFields(t)
		seen := map[string]bool{}
		for dec.More() {
			keyTok, err := dec.Token()
			if err != nil {
				return syntaxError(err, path)
			}
			key := keyTok.(string)
			sub := join(path, key)
			ft, ok := fields[key]
			if !ok {
				return fmt.Errorf("%s: unknown field (known fields: %s)", where(sub), strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
			}
			if seen[key] {
				return fmt.Errorf("%s: field given twice", where(sub))
			}
			seen[key] = true
			if err := walk(dec, ft, sub); err != nil {
				return err
			}
		}
		_, err := dec.Token() // '}'
		return syntaxError(err, path)
	case reflect.Slice:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return typeError(path, "an array", tok)
		}
		for i := 0; dec.More(); i++ {
			if err := walk(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return syntaxError(err, path)
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return typeError(path, "a string", tok)
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return typeError(path, "true or false", tok)
		}
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint32, reflect.Uint64:
		n, ok := tok.(json.Number)
		if !ok {
			return typeError(path, "a whole number", tok)
		}
		if _, err := n.Int64(); err != nil {
			return fmt.Errorf("%s: %s is not a whole number", where(path), n)
		}
	default:
		return fmt.Errorf("%s: internal error: unsupported schema type %s", where(path), t)
	}
	return nil
}

// jsonFields maps the JSON names of a struct's exported fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func where(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

func typeError(path, want string, got json.Token) error {
	var desc string
	switch v := got.(type) {
	case json.Delim:
		if v == '{' {
			desc = "an object"
		} else {
			desc = "an array"
		}
	case string:
		desc = fmt.Sprintf("the string %q", v)
	case json.Number:
		desc = "the number " + v.String()
	case bool:
		desc = fmt.Sprintf("%v", v)
	default:
		desc = fmt.Sprintf("%v", v)
	}
	return fmt.Errorf("%s: must be %s, not %s", where(path), want, desc)
}

func syntaxError(err error, path string) error {
	if err == nil {
		return nil
	}
	if err == io.EOF {
		return fmt.Errorf("%s: document ends too early", where(path))
	}
	return fmt.Errorf("%s: invalid JSON: %v", where(path), err)
}
