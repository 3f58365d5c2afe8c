package objstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/objstore"
)

func TestDir(t *testing.T) {
	st, err := objstore.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Put(ctx, "a/b/c", strings.NewReader("hello"), 5); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "a/b/d", strings.NewReader("hello"), 6); err == nil {
		t.Fatal("a short read was stored")
	}
	objs, err := st.List(ctx, "a/")
	if err != nil || len(objs) != 1 || objs[0].Name != "a/b/c" {
		t.Fatalf("%+v %v", objs, err)
	}
	for _, bad := range []string{"", "/etc/passwd", "../x", "a/../../x", "a//b"} {
		if err := st.Put(ctx, bad, strings.NewReader(""), 0); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	if _, err := st.Get(ctx, "a/none"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
}
