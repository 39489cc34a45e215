package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore/hsmkey"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// errNoMasterKey: neither the flags nor the config name a master key.
var errNoMasterKey = errors.New("no master key")

// recipients returns every master key that new backups are wrapped to: the
// keyring, the HPKE public keys and the HSM-held key, as configured.
func (e *env) recipients(ctx context.Context) ([]wrap.Recipient, error) {
	var out []wrap.Recipient
	if kr, err := e.optionalKeyring(); err != nil {
		return nil, err
	} else if kr != nil {
		out = append(out, kr)
	}
	for _, p := range flagOrConfig(sliceValue(e.c, "hpke-recipient"), e.cfg.HPKERecipients) {
		r, err := wrap.LoadHPKERecipient(p)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if hk, err := e.hsmKey(ctx); err != nil {
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
func (e *env) identities(ctx context.Context) ([]wrap.Identity, error) {
	var out []wrap.Identity
	if kr, err := e.optionalKeyring(); err != nil {
		return nil, err
	} else if kr != nil {
		out = append(out, kr)
	}
	for _, p := range flagOrConfig(sliceValue(e.c, "hpke-identity"), e.cfg.HPKEIdentities) {
		id, err := wrap.LoadHPKEIdentity(p)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	if hk, err := e.hsmKey(ctx); err != nil {
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
func (e *env) optionalKeyring() (*wrap.Keyring, error) {
	p := cmp.Or(flagValue(e.c, "keyring"), e.cfg.Keyring)
	if p == "" {
		return nil, nil
	}
	return wrap.LoadKeyring(p)
}

// hsmKey returns the config's HSM-held master key, or nil if it names
// none. The first call logs in to the key's cluster as its crypto user;
// the session ends with e.close.
func (e *env) hsmKey(ctx context.Context) (*wrap.HSMRecipient, error) {
	k := e.cfg.HSMKey
	if k == nil {
		return nil, nil
	}
	if e.hsmKeyRecipient != nil {
		return e.hsmKeyRecipient, nil
	}
	t, err := e.clusterTarget(k.Cluster, false)
	if err != nil {
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	kc, err := t.as(k.User, k.PasswordFile, "hsm_key's password_file in the config").open(ctx, e.log, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	r, err := wrap.NewHSMRecipient(hsmkey.New(kc, k.Cluster, k.Handle))
	if err != nil {
		kc.Close()
		return nil, fmt.Errorf("hsm_key: %w", err)
	}
	e.hsmKeyCluster, e.hsmKeyRecipient = kc, r
	return r, nil
}
