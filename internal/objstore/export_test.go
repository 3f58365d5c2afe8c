package objstore

// SetListPage sets the listing page size of s (0: the server's default).
func SetListPage(s *S3, n int) { s.listPage = n }
