//go:build !bulwarktest

package mgmt

import "net/http"

// prepareTest serves no call: the test-only calls exist only in the test
// image's build (tag bulwarktest, testhooks_bulwarktest.go).
func (s *Server) prepareTest(route, *http.Request) (*call, int, any, bool) { return nil, 0, nil, false }
