package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmkey"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// masterKeyFlags choose the master keys of the outer layer; each kind may
// be set in the config file instead (keyring, hpke_recipients,
// hpke_identities, hsm_key). A flag replaces the file's setting of its
// kind.
func masterKeyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "keyring", Usage: "master keyring `FILE` (mode 0600): wraps new backups and opens them"},
		&cli.StringSliceFlag{Name: "hpke-recipient", Usage: "HPKE public key `FILE` that new backups are wrapped to as well (repeatable)"},
		&cli.StringSliceFlag{Name: "hpke-identity", Usage: "HPKE private key `FILE` (mode 0600) that opens backups wrapped to its public key (repeatable)"},
	}
}

// sliceValue returns the values of string slice flag name given after the
// command or before it, the nearest winning.
func sliceValue(c *cli.Context, name string) []string {
	for _, cc := range c.Lineage() {
		if v := cc.StringSlice(name); len(v) > 0 {
			return v
		}
	}
	return nil
}

// flagOrConfig returns the flag's list if given, else the config's.
func flagOrConfig(flag, config []string) []string {
	if len(flag) > 0 {
		return flag
	}
	return config
}

// errNoMasterKey: neither the flags nor the config name a master key.
var errNoMasterKey = errors.New("no master key")

// recipients returns every master key that new backups are wrapped to: the
// keyring, the HPKE public keys and the HSM-held key, as configured.
func (s *service) recipients(ctx context.Context) ([]wrap.Recipient, error) {
	var out []wrap.Recipient
	if kr, err := s.optionalKeyring(); err != nil {
		return nil, err
	} else if kr != nil {
		out = append(out, kr)
	}
	for _, p := range flagOrConfig(sliceValue(s.c, "hpke-recipient"), s.cfg.HPKERecipients) {
		r, err := wrap.LoadHPKERecipient(p)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if hk, err := s.hsmKey(ctx); err != nil {
		return nil, err
	} else if hk != nil {
		out = append(out, hk)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w to wrap to: give --keyring or --hpke-recipient, or set keyring, hpke_recipients or hsm_key in --config", errNoMasterKey)
	}
	return out, nil
}

// identities returns every master key that opens backups: the keyring, the
// HPKE private keys and the HSM-held key, as configured.
func (s *service) identities(ctx context.Context) ([]wrap.Identity, error) {
	var out []wrap.Identity
	if kr, err := s.optionalKeyring(); err != nil {
		return nil, err
	} else if kr != nil {
		out = append(out, kr)
	}
	for _, p := range flagOrConfig(sliceValue(s.c, "hpke-identity"), s.cfg.HPKEIdentities) {
		id, err := wrap.LoadHPKEIdentity(p)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	if hk, err := s.hsmKey(ctx); err != nil {
		return nil, err
	} else if hk != nil {
		out = append(out, hk)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w to open backups with: give --keyring or --hpke-identity, or set keyring, hpke_identities or hsm_key in --config", errNoMasterKey)
	}
	return out, nil
}

// optionalKeyring returns the keyring of --keyring or the config, or nil
// if neither names one.
func (s *service) optionalKeyring() (*wrap.Keyring, error) {
	p := cmp.Or(flagValue(s.c, "keyring"), s.cfg.Keyring)
	if p == "" {
		return nil, nil
	}
	return wrap.LoadKeyring(p)
}

// hsmKey returns the config's HSM-held master key, or nil if it names
// none. The first call logs in to the key's cluster as its crypto user;
// the session ends with s.close.
func (s *service) hsmKey(ctx context.Context) (*wrap.HSMRecipient, error) {
	k := s.cfg.HSMKey
	if k == nil {
		return nil, nil
	}
	if s.hsmKeyRecipient != nil {
		return s.hsmKeyRecipient, nil
	}
	cc, err := s.cluster(k.Cluster)
	if err != nil {
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	base, err := clientConfig(k.Cluster, cc)
	if err != nil {
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	password, err := passwordFrom(k.PasswordFile, "hsm_key's password_file in the config")
	if err != nil {
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	kc, err := cluster.Open(ctx, cluster.Config{Members: cc.Members, Client: base, Logger: s.log}, k.User, password)
	if err != nil {
		return nil, fmt.Errorf("hsm_key: cluster %s: %w", k.Cluster, err)
	}
	r, err := wrap.NewHSMRecipient(hsmkey.New(kc, k.Cluster, k.Handle))
	if err != nil {
		kc.Close()
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	s.hsmKeyCluster, s.hsmKeyRecipient = kc, r
	return r, nil
}
