package main

import (
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// loadClaims reads claim files (hsmcore.Claim), each of mode 0600; nil
// for none.
func loadClaims(paths ...string) (hsmcore.Claims, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	cs := hsmcore.Claims{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		b, err := atomicfile.ReadPrivate(p)
		if err != nil {
			return nil, fmt.Errorf("claim file: %w", err)
		}
		c, err := hsmcore.ParseClaim(b)
		clear(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		cs.Add(c)
	}
	return cs, nil
}
