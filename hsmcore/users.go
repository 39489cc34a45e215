package hsmcore

// Role is a user's role, as in CloudHSM.
type Role string

// UserInfo describes a user.
type UserInfo struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

const (
	// CryptoOfficer manages users, marks keys trusted, and exports and
	// imports images. It cannot use keys.
	CryptoOfficer Role = "CO"
	// CryptoUser owns keys, shares them, and uses them.
	CryptoUser Role = "CU"
)
