package hsmcore

// Role is a user's role, as in CloudHSM.
type Role string

// UserInfo describes a user.
type UserInfo struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// Inventory is what an HSM holds, named: its users, by name, and its token
// keys, by handle, each with its check value. It is what a backup's
// manifest records of the HSM, at a fraction of the cost of every key's
// attributes.
type Inventory struct {
	Users    []UserInfo `json:"users"`
	KeyCount int        `json:"key_count"`
	// Keys are all KeyCount keys, or none when there are more than the
	// caller asked for.
	Keys []KeyRef `json:"keys,omitempty"`
}

// KeyRef names a key: its handle and check value (KeyInfo.KCV; empty for
// a generic secret of under 128 bits).
type KeyRef struct {
	Handle uint64 `json:"handle"`
	KCV    string `json:"kcv"`
}

const (
	// CryptoOfficer manages users, marks keys trusted, and exports and
	// imports images. It cannot use keys.
	CryptoOfficer Role = "CO"
	// CryptoUser owns keys, shares them, and uses them.
	CryptoUser Role = "CU"
)
