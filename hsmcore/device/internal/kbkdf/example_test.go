package kbkdf_test

import (
	"encoding/hex"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"
)

func ExampleDerive() {
	// A 32-byte key-derivation key; in real use this comes from the HSM.
	kdk, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")

	// Derive a 32-byte key bound to a purpose (label) and a context. The
	// output below was also reproduced with OpenSSL 3.0's KBKDF (see
	// TestDeriveMatchesOpenSSL for the command).
	key := kbkdf.Derive(kdk, []byte("hsmbackup example"), []byte("backup 42"), 32)
	fmt.Println(hex.EncodeToString(key))
	// Output:
	// 67a37c879bc20cc18b3d00b1726c94850eafa5f46db2419339f03c10fd356be8
}
