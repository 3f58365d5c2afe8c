//go:build bulwarktest

package mgmt

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// TestHooker is what the test image's node implements: it runs a named
// test hook against one of its services (kill it, make it panic, make it
// call a forbidden system call).
type TestHooker interface {
	TestHook(service, hook string) (any, error)
}

// The test image's extra call, control-plane only and audited like every
// other: POST /v1/test/hook {"service": ..., "hook": ...}.
func init() {
	routes = append(routes, route{"POST", "/v1/test/hook", controlOnly})
}

func (s *Server) prepareTest(rt route, r *http.Request) (*call, int, any, bool) {
	if rt.method+" "+rt.path != "POST /v1/test/hook" {
		return nil, 0, nil, false
	}
	var req struct {
		Service string `json:"service"`
		Hook    string `json:"hook"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, 400, map[string]string{"error": "body: " + err.Error()}, true
	}
	h, ok := s.o.Node.(TestHooker)
	if !ok {
		return nil, 501, map[string]string{"error": "this node has no test hooks"}, true
	}
	return &call{note: fmt.Sprintf("test hook %s on %s", req.Hook, req.Service), run: func() (int, any, func()) {
		res, err := h.TestHook(req.Service, req.Hook)
		if err != nil {
			return 400, map[string]string{"error": err.Error()}, nil
		}
		return 200, map[string]any{"result": res}, nil
	}}, 0, nil, true
}
