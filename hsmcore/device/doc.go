// Package device is the software HSM behind hsmcore's contract, modelled
// on CloudHSM hsm2m.medium: a device directory with a sealed state, a
// device key certified by a manufacturer and an operator, hardware-bound
// backup keys (MKBK, AKBK, and PBK derived from them by NIST SP 800-108),
// crypto officers and users, a PKCS#11-style key store, image export and
// import, change records between members of a cluster, quorum, attestation
// and a hash-chained audit log.
//
// Secret material (MKBK, AKBK, PBK, EBKs, the device and cluster keys, and
// every key's material) never leaves this package except wrapped. Only the
// daemon (hsmcore/server), `hsmbackup hsm manufacture|serve`, the demo and
// the test harness (hsmcore/hsmtest) import it; the pipeline never does.
// docs/HSMCORE.md says what a real HSM adds.
package device
