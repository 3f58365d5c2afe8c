package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
)

// BenchmarkPut uploads a 64 MiB object (four 16 MiB parts, each with its
// SHA-256 checksum) to a loopback MinIO, then checks its size
// (docs/performance.md).
func BenchmarkPut(b *testing.B) {
	srv := miniotest.Start(b, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(b, "bench")
	o := s3.Options{Endpoint: srv.Endpoint(), AllowHTTP: true, Bucket: "bench", Region: "eu-north-1",
		AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, Attempts: 1}
	st, err := s3.New(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 64<<20)
	rand.Read(data)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := st.Put(context.Background(), "seg", bytes.NewReader(data), int64(len(data))); err != nil {
			b.Fatal(err)
		}
	}
}
