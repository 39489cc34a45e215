package stream_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log"

	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/stream"
)

func Example() {
	key := make([]byte, stream.KeySize)
	if _, err := rand.Read(key); err != nil {
		log.Fatal(err)
	}
	header := []byte("image header")

	var body bytes.Buffer
	w, err := stream.NewWriter(&body, key, header)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.WriteString(w, "HSM key material"); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil { // seals the last chunk
		log.Fatal(err)
	}
	fmt.Println(body.Len() == int(stream.EncryptedSize(16)))

	r, err := stream.NewReader(&body, key, header)
	if err != nil {
		log.Fatal(err)
	}
	pt, err := io.ReadAll(r) // authentic only if err == nil
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", pt)
	// Output:
	// true
	// HSM key material
}
