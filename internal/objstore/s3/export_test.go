package s3

// SetListPage sets the listing page size of s (0: the server's default).
func SetListPage(s *Store, n int) { s.listPage = n }

// WithSecret is a store like s whose secret key is secret, made without
// asking the bucket.
func WithSecret(s *Store, secret string) *Store {
	o := s.o
	o.SecretKey = secret
	n, err := newStore(o)
	if err != nil {
		panic(err)
	}
	return n
}
