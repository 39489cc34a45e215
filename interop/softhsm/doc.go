// Package softhsm proves, against a real SoftHSMv2 token through PKCS#11
// (github.com/miekg/pkcs11, cgo), that keys move both ways between an
// hsmbackup cluster and another PKCS#11 HSM, and that each moved key still
// works. The package has no code of its own: it is its tests.
//
// The cluster is two in-process HSM daemons over mutual TLS
// (hsmcore/hsmtest); the other side is a fresh SoftHSMv2 token per test,
// in a directory of the test's own (SOFTHSM2_CONF). The tests show:
//
//   - a KEK made in SoftHSM enters the cluster wrapped with RSA-OAEP-SHA1
//     (CKM_RSA_PKCS_OAEP, SHA-1) under a cluster RSA key's public half;
//   - an AES-256 key moves under that shared KEK with aes-kwp
//     (CKM_AES_KEY_WRAP_PAD) from SoftHSM to the cluster and back;
//   - rsa-aes-sha1 (CKM_RSA_AES_KEY_WRAP, which SoftHSM 2.6.1 lacks) is
//     opened and made by SoftHSM in two steps, RSA-OAEP of an AES key
//     then AES-KWP under it, in both directions;
//   - neither side wraps a key that is not extractable.
//
// A moved key "works" when it has the same check value on both sides and
// decrypts what the other side encrypted: the cluster's Encrypt is
// AES-256-GCM laid out as IV(12) ‖ ciphertext ‖ tag(16), which SoftHSM's
// CKM_AES_GCM makes and opens given the IV.
//
// BenchmarkSoftHSMWrapPad measures SoftHSM's own C_WrapKey rate with
// CKM_AES_KEY_WRAP_PAD, for comparison with the cluster's.
//
// Run with
//
//	go test -race ./interop/softhsm/
//	go test -run '^$' -bench BenchmarkSoftHSMWrapPad -benchtime 1x ./interop/softhsm/
//
// SoftHSMv2 must be installed (Debian: softhsm2, which `make tools`
// installs); its module is /usr/lib/softhsm/libsofthsm2.so unless
// SOFTHSM2_MODULE names another. Without it the tests skip, or fail under
// HSMBACKUP_TEST_DISALLOW_SKIP=1 as `make test` runs them.
package softhsm
