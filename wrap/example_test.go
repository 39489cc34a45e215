package wrap_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/hsmbackup/hsmbackup/wrap"
)

// A keyring file: generate a master key, wrap an image, rotate the key,
// rewrap the envelope (header only), open it.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "wrap-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "master.keyring")

	if _, err := wrap.GenerateMasterKey(path, "prod"); err != nil {
		log.Fatal(err)
	}
	k, err := wrap.LoadKeyring(path)
	if err != nil {
		log.Fatal(err)
	}
	var stored bytes.Buffer
	w, err := wrap.Encrypt(ctx, &stored, k)
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(w, strings.NewReader("an HSM image, already encrypted by the HSM"))
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	// Master-key rotation: a new version becomes current, and the stored
	// envelope is rewrapped to it. The body is copied, not re-encrypted.
	if _, err := wrap.RotateMasterKey(path); err != nil {
		log.Fatal(err)
	}
	if k, err = wrap.LoadKeyring(path); err != nil {
		log.Fatal(err)
	}
	var rotated bytes.Buffer
	if err := wrap.Rewrap(ctx, &stored, &rotated, []wrap.Identity{k}, k); err != nil {
		log.Fatal(err)
	}
	h, err := wrap.ReadHeader(bytes.NewReader(rotated.Bytes()))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h.Recipients())

	r, err := wrap.Decrypt(ctx, &rotated, k)
	if err != nil {
		log.Fatal(err)
	}
	image, err := io.ReadAll(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(image))

	keys, err := wrap.ListMasterKeys(path)
	if err != nil {
		log.Fatal(err)
	}
	for _, key := range keys {
		fmt.Println(key, key.Current)
	}
	// Output:
	// [keyring prod 2]
	// an HSM image, already encrypted by the HSM
	// prod v1 false
	// prod v2 true
}

// A backup writer that holds only a public key can make envelopes but not
// open them; the private key is loaded only where backups are restored.
func ExampleGenerateHPKEKey() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "wrap-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	priv, pub := filepath.Join(dir, "restore.key"), filepath.Join(dir, "restore.pub")
	if _, err := wrap.GenerateHPKEKey(priv, pub); err != nil {
		log.Fatal(err)
	}

	writer, err := wrap.LoadHPKERecipient(pub)
	if err != nil {
		log.Fatal(err)
	}
	var stored bytes.Buffer
	w, err := wrap.Encrypt(ctx, &stored, writer)
	if err != nil {
		log.Fatal(err)
	}
	io.WriteString(w, "image")
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	restorer, err := wrap.LoadHPKEIdentity(priv)
	if err != nil {
		log.Fatal(err)
	}
	r, err := wrap.Decrypt(ctx, &stored, restorer)
	if err != nil {
		log.Fatal(err)
	}
	image, _ := io.ReadAll(r)
	fmt.Println(string(image))
	// Output: image
}
