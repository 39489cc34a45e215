// Package hsmcore is the HSM's contract: what the pipeline (backup,
// restore, the scheduler and the CLI) knows of an HSM without holding one.
//
// It defines an HSM's public identity (Identity), the clear-text header of
// an image (ImageHeader, ReadImageHeader), attestations, their
// verification and the challenge that gets one fresh (Attestation,
// VerifyAttestation, Attester, Challenge), the descriptions of keys
// and users (KeyInfo, KeySpec, Role, UserInfo), and the sentinel errors
// every implementation and client returns. Nothing here holds or derives a
// secret.
//
// The software HSM that implements the contract is hsmcore/device; the
// daemon that serves it is hsmcore/server, and hsmcore/client and
// hsmcore/cluster reach one HSM or a cluster of them over mutual TLS.
package hsmcore
