package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmkey"
	"github.com/hsmbackup/hsmbackup/wrap"
)

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
