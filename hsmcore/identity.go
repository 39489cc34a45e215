package hsmcore

import (
	"fmt"
	"strconv"
	"strings"
)

// Identity is what an HSM is: who made it, of which hardware class, who
// operates it, and what it runs. It is public; certificates and
// attestations carry it.
type Identity struct {
	Serial       string `json:"serial"`
	Class        string `json:"class"`
	Manufacturer string `json:"manufacturer"`
	Operator     string `json:"operator"`
	Firmware     string `json:"firmware"`
	FIPS         bool   `json:"fips"`
}

// FirmwareVersion is a parsed "major.minor.patch" version.
type FirmwareVersion [3]int

func ParseFirmware(s string) (FirmwareVersion, error) {
	var v FirmwareVersion
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("firmware %q: want major.minor.patch: %w", s, ErrInvalid)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 9999 || strconv.Itoa(n) != p {
			return v, fmt.Errorf("firmware %q: want major.minor.patch: %w", s, ErrInvalid)
		}
		v[i] = n
	}
	return v, nil
}

func (v FirmwareVersion) Less(w FirmwareVersion) bool {
	for i := range v {
		if v[i] != w[i] {
			return v[i] < w[i]
		}
	}
	return false
}
