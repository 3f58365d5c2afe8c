package backup

// TestPattern returns n bytes of a fixed, non-repeating-per-chunk pattern:
// the plaintext of the test vectors (testdata/gen), so that tests can
// recompute it instead of committing it.
func TestPattern(n int) []byte {
	b := make([]byte, n)
	var x uint32 = 2463534242
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}
