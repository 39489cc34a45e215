package hsmcore

import (
	"encoding/hex"
	"strconv"
)

// The objects of quorum tokens. An approval binds every parameter of the
// operation it approves: the HSM consumes a token only for the operation
// it runs and the object these functions build from that call's own
// parameters, so that an officer who reads a token's op and object before
// signing it knows all that the approval permits, and approvals for one
// call never serve another. User names, cluster ids and serials hold no
// spaces or '=' (CheckName), so each object reads one way only.

// UserCreateObject is the object of a "user.create" token: the new user's
// name and role, as in "alice role=CU".
func UserCreateObject(name string, role Role) string { return name + " role=" + string(role) }

// UserDeleteObject is the object of a "user.delete" token: the user's name
// and the role it holds, as in "alice role=CU", so that approvals to
// delete a crypto user do not delete an officer given the same name since.
func UserDeleteObject(name string, role Role) string { return name + " role=" + string(role) }

// KeyTrustObject is the object of a "key.trust" token: the key handle in
// decimal and the value set, as in "42 trusted=true".
func KeyTrustObject(handle uint64, trusted bool) string {
	return strconv.FormatUint(handle, 10) + " trusted=" + strconv.FormatBool(trusted)
}

// QuorumSetObject is the object of a "quorum.set" token: the operation
// whose quorum changes and its new M (0 removes the quorum), as in
// "user.create=3".
func QuorumSetObject(op string, m int) string { return op + "=" + strconv.Itoa(m) }

// ImageImportObject is the object of an "image.import" token: the SHA-256
// of the image's bytes exactly as sent to the HSM, as in "sha256:" and 64
// lower-case hex digits. It is the digest of an image file (sha256sum),
// the image_sha256 of a backup's manifest and the SHA256 of the
// exporting HSM's signed image statement. The HSM computes it as the image
// arrives and checks the approval against it after the whole image has
// been read and verified, before it commits.
func ImageImportObject(sum [32]byte) string { return "sha256:" + hex.EncodeToString(sum[:]) }

// ImageExportObject is the object of an "image.export" token: the cluster
// whose image leaves the HSM, as in "cluster=cluster-1", or, on an HSM of
// no cluster, its serial, as in "serial=HSM-0A1B2C3D4E5F". One set of
// approvals serves every member of the cluster, once each.
func ImageExportObject(clusterID, serial string) string {
	if clusterID != "" {
		return "cluster=" + clusterID
	}
	return "serial=" + serial
}

// ZeroizeObject is the object of a "device.zeroize" token: the serial of
// the HSM to zeroize, so that approvals to zeroize one member do not
// zeroize another.
func ZeroizeObject(serial string) string { return serial }
