package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/kmsimport"
)

// The keys commands work on a whole cluster as one user: what the user may
// see and do is the HSMs' to decide (a crypto user sees the keys it owns
// or shares; a crypto officer sees every key's attributes and may change
// only their trust). Changes go to one member and replicate to the others.

func keysCommand() *cli.Command {
	conn := func(fs ...cli.Flag) []cli.Flag {
		return append(append(connectionFlags(), loginFlags("user (a crypto user for keys it owns)")...), append(fs, jsonFlag())...)
	}
	return &cli.Command{
		Name:  "keys",
		Usage: "list, show, generate and delete the keys of a cluster",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list the keys the user may see: handle, label, type, size, check value, owner and flags",
				Description: "Filters combine: every one given must match. --attr NAME keeps the keys\n" +
					"with that attribute set, --attr NAME=false those without it; names: " + strings.Join(attrNames(), ", ") + ".",
				Flags: conn(
					&cli.StringFlag{Name: "label", Usage: "only keys labelled `LABEL`"},
					&cli.StringFlag{Name: "type", Usage: "only keys of `TYPE`: aes, rsa, ec or generic-secret"},
					&cli.StringFlag{Name: "owner", Usage: "only keys owned by `USER`"},
					&cli.StringSliceFlag{Name: "attr", Usage: "only keys with attribute `NAME` set (NAME=false: not set); repeatable"},
				),
				OnUsageError: usageError,
				Action:       envAction("keys list", keysList),
			},
			{
				Name:         "show",
				Usage:        "show every attribute of one key",
				Flags:        conn(handleFlag()),
				OnUsageError: usageError,
				Action:       envAction("keys show", keysShow),
			},
			{
				Name:  "generate",
				Usage: "generate keys in the HSM (a crypto user, who owns them)",
				Description: "Makes --count keys of --type inside the HSM, stored (token keys), and\n" +
					"replicates them to every member. --usage names what a key may do, from\n" +
					"encrypt, decrypt, sign, verify, wrap and unwrap (comma-separated).\n" +
					"--extractable lets it leave the HSM wrapped (fixed at creation);\n" +
					"--wrap-with-trusted lets it leave only under a trusted wrapping key.",
				Flags: conn(append(specFlags(),
					&cli.StringFlag{Name: "unwrap-template", Usage: "bound every key this key unwraps to `LIST`: usages, extractable, wrap-with-trusted (forced on)"},
					&cli.IntFlag{Name: "count", Usage: "how many keys to make, in one batch", Value: 1})...),
				OnUsageError: usageError,
				Action:       envAction("keys generate", keysGenerate),
			},
			{
				Name:  "wrap",
				Usage: "export a key wrapped under another key of the HSM",
				Description: "Wraps key --handle under key --wrapping-key with --mechanism, inside the\n" +
					"HSM, and writes the wrapped bytes to --out (a new file, mode 0600). The key\n" +
					"must be extractable, and if it has wrap-with-trusted set the wrapping key\n" +
					"must be trusted. Mechanisms: " + mechanismList() + " (docs/FORMATS.md).",
				Flags: conn(handleFlag(),
					&cli.Uint64Flag{Name: "wrapping-key", Usage: "`HANDLE` of the wrapping key: AES for aes-*, RSA for rsa-* (required)"},
					mechanismFlag(),
					&cli.StringFlag{Name: "out", Usage: "new `FILE` to write the wrapped key to (required)"}),
				OnUsageError: usageError,
				Action:       envAction("keys wrap", keysWrap),
			},
			{
				Name:  "unwrap",
				Usage: "import a wrapped key under a key of the HSM",
				Description: "Unwraps the bytes of --in under key --unwrapping-key with --mechanism,\n" +
					"inside the HSM, as a new key owned by the user with the attributes the\n" +
					"flags give (as for 'keys generate'); --type and its size must be the\n" +
					"wrapped key's. The new key is not local, and replicates to every member.",
				Flags: conn(append(specFlags(),
					&cli.Uint64Flag{Name: "unwrapping-key", Usage: "`HANDLE` of the unwrapping key (required)"},
					mechanismFlag(),
					&cli.StringFlag{Name: "in", Usage: "`FILE` of the wrapped key (required)"})...),
				OnUsageError: usageError,
				Action:       envAction("keys unwrap", keysUnwrap),
			},
			{
				Name:  "export",
				Usage: "export a key wrapped for a cloud KMS's import (aws-kms, gcp-kms, azure-byok), or keys for an hsmbackup offer",
				Description: "Wraps key --handle inside the HSM under the cloud's wrapping public key\n" +
					"(--wrapping-key: PEM, DER or base64 of DER, RSA 2048 to 4096) and writes\n" +
					"the files the cloud's import step takes into the new directory --out:\n" +
					"aws-kms EncryptedKeyMaterial.bin beside ImportToken.bin (--import-token,\n" +
					"the token issued with the wrapping key), gcp-kms wrapped-key.bin,\n" +
					"azure-byok key.byok (--kid, the key-exchange key's URL). The mechanism is\n" +
					"the cloud's default unless --mechanism names another it takes. A key with\n" +
					"wrap-with-trusted never leaves under an outside key. docs/MIGRATION.md\n" +
					"shows the cloud-side commands.\n\n" +
					"--to hsmbackup: --wrapping-key is an offer 'keys import --prepare' wrote\n" +
					"at a cluster out of reach. This command checks its attestation (the\n" +
					"manufacturer and operator roots of --config, and its cluster certificate\n" +
					"against --destination-ca, else the customer_ca of that cluster in\n" +
					"--config), and the HSM, checking it again, writes the keys of --user that\n" +
					"--handle or the filters select (up to 100) into --out/package.json, for\n" +
					"'keys import --in' there. Only extractable keys without wrap-with-trusted\n" +
					"leave; --dry-run makes every check and writes nothing.",
				Flags: conn(handleFlag(),
					&cli.StringFlag{Name: "to", Usage: "`CLOUD`: aws-kms, gcp-kms or azure-byok; or hsmbackup, for an offer (required)"},
					&cli.StringFlag{Name: "wrapping-key", Usage: "`FILE` of the cloud's wrapping public key (required)"},
					&cli.StringFlag{Name: "mechanism", Usage: "wrap `MECHANISM` the cloud takes (default: the cloud's; see docs/MIGRATION.md)"},
					&cli.StringFlag{Name: "import-token", Usage: "`FILE` of the AWS import token issued with the wrapping key (aws-kms)"},
					&cli.StringFlag{Name: "kid", Usage: "`URL` of the Azure key-exchange key, with its version (azure-byok)"},
					&cli.StringFlag{Name: "out", Usage: "new `DIR` to write the files into (required)"},
					&cli.StringFlag{Name: "destination-ca", Usage: "hsmbackup: PEM `FILE` of the customer CA of the offer's cluster (default: its customer_ca in --config)"},
					&cli.StringFlag{Name: "label", Usage: "hsmbackup: only keys labelled `LABEL`"},
					&cli.StringFlag{Name: "type", Usage: "hsmbackup: only keys of `TYPE`"},
					&cli.StringSliceFlag{Name: "attr", Usage: "hsmbackup: only keys with attribute `NAME` set (NAME=false: not set); repeatable"},
					&cli.BoolFlag{Name: "dry-run", Usage: "hsmbackup: make every check and write nothing"}),
				OnUsageError: usageError,
				Action:       envAction("keys export", keysExport),
			},
			keysImportCommand(conn),
			keysMigrateCommand(),
			{
				Name:  "delete",
				Usage: "delete a key from every member (its owner only)",
				Description: "There is no undo but a restore: without --yes nothing is done. The key\n" +
					"stays in the backups taken before.",
				Flags: conn(handleFlag(),
					&cli.BoolFlag{Name: "yes", Usage: "delete: without it, the command only says what would be deleted"}),
				OnUsageError: usageError,
				Action:       envAction("keys delete", keysDelete),
			},
		},
	}
}

// maxGenerate bounds keys generate's batch: one request to the HSM.
const maxGenerate = 1000

func handleFlag() cli.Flag {
	return &cli.Uint64Flag{Name: "handle", Usage: "`HANDLE` of the key (required)"}
}

// openAs logs in to every member of the command's cluster as its user.
func openAs(c *cli.Context, e *env) (*cluster.Cluster, error) {
	t, err := e.target(c, trustMember, needs{user: true, cert: true})
	if err != nil {
		return nil, err
	}
	return t.open(c.Context, e.log, nil, nil)
}

// keyAttrs are the boolean attributes a listing filters on and shows, by
// the names the commands use.
var keyAttrs = []struct {
	name string
	get  func(hsmcore.KeyInfo) bool
}{
	{"extractable", func(k hsmcore.KeyInfo) bool { return k.Extractable }},
	{"local", func(k hsmcore.KeyInfo) bool { return k.Local }},
	{"encrypt", func(k hsmcore.KeyInfo) bool { return k.Encrypt }},
	{"decrypt", func(k hsmcore.KeyInfo) bool { return k.Decrypt }},
	{"sign", func(k hsmcore.KeyInfo) bool { return k.Sign }},
	{"verify", func(k hsmcore.KeyInfo) bool { return k.Verify }},
	{"wrap", func(k hsmcore.KeyInfo) bool { return k.Wrap }},
	{"unwrap", func(k hsmcore.KeyInfo) bool { return k.Unwrap }},
	{"trusted", func(k hsmcore.KeyInfo) bool { return k.Trusted }},
	{"wrap-with-trusted", func(k hsmcore.KeyInfo) bool { return k.WrapWithTrusted }},
	{"never-extractable", func(k hsmcore.KeyInfo) bool { return k.NeverExtractable }},
}

func attrNames() []string {
	var names []string
	for _, a := range keyAttrs {
		names = append(names, a.name)
	}
	return names
}

// keyFilter is what keys list keeps.
type keyFilter struct {
	label, owner string
	typ          hsmcore.KeyType
	attrs        map[string]bool // attribute name: the value it must have
}

func parseKeyFilter(c *cli.Context) (keyFilter, error) {
	f := keyFilter{label: c.String("label"), owner: c.String("owner"), attrs: map[string]bool{}}
	if s := c.String("type"); s != "" {
		t, err := parseKeyType(s)
		if err != nil {
			return f, err
		}
		f.typ = t
	}
	for _, a := range c.StringSlice("attr") {
		name, val, hasVal := strings.Cut(a, "=")
		want := true
		if hasVal {
			b, err := strconv.ParseBool(val)
			if err != nil {
				return f, usagef("--attr %s: the value is true or false", a)
			}
			want = b
		}
		if !slices.Contains(attrNames(), name) {
			return f, usagef("--attr %s: unknown attribute (one of %s)", name, strings.Join(attrNames(), ", "))
		}
		f.attrs[name] = want
	}
	return f, nil
}

func (f keyFilter) keep(k hsmcore.KeyInfo) bool {
	if f.label != "" && k.Label != f.label || f.owner != "" && k.Owner != f.owner || f.typ != "" && k.Type != f.typ {
		return false
	}
	for _, a := range keyAttrs {
		if want, ok := f.attrs[a.name]; ok && a.get(k) != want {
			return false
		}
	}
	return true
}

func parseKeyType(s string) (hsmcore.KeyType, error) {
	switch t := hsmcore.KeyType(strings.ToLower(s)); t {
	case hsmcore.AES, hsmcore.RSA, hsmcore.EC, hsmcore.GenericSecret, hsmcore.HPKE:
		return t, nil
	case "generic":
		return hsmcore.GenericSecret, nil
	}
	return "", usagef("--type %s: not a key type (aes, rsa, ec, generic-secret or hpke)", s)
}

func keysList(c *cli.Context, e *env) error {
	f, err := parseKeyFilter(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	all, err := cl.Keys(c.Context)
	if err != nil {
		return err
	}
	var keys []hsmcore.KeyInfo
	for _, k := range all {
		if f.keep(k) {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b hsmcore.KeyInfo) int { return cmp.Compare(a.Handle, b.Handle) })
	if e.g.json {
		return writeJSONList(e.stdout, keys, countSummary{Count: len(keys)})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLE\tLABEL\tTYPE\tSIZE\tKCV\tOWNER\tFLAGS")
	for _, k := range keys {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Handle, orDash(k.Label), k.Type, keySize(k), orDash(k.KCV), k.Owner, orDash(strings.Join(keyFlags(k), ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", plural(len(keys), "key"))
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// keySize is "256" or "P-256".
func keySize(k hsmcore.KeyInfo) string {
	if k.Curve != "" {
		return k.Curve
	}
	return strconv.Itoa(k.Bits)
}

// keyFlags names the key's attributes that are set, in keyAttrs order.
func keyFlags(k hsmcore.KeyInfo) []string {
	var fs []string
	for _, a := range keyAttrs {
		if a.get(k) {
			fs = append(fs, a.name)
		}
	}
	return fs
}

// findKey returns the key of --handle among those the user may see.
func findKey(ctx context.Context, cl *cluster.Cluster, h uint64) (hsmcore.KeyInfo, error) {
	keys, err := cl.Keys(ctx)
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	i := slices.IndexFunc(keys, func(k hsmcore.KeyInfo) bool { return k.Handle == h })
	if i < 0 {
		return hsmcore.KeyInfo{}, fmt.Errorf("key %d: no such key among those this user may see: %w", h, hsmcore.ErrNotFound)
	}
	return keys[i], nil
}

func requireHandle(c *cli.Context) (uint64, error) {
	if !c.IsSet("handle") {
		return 0, usagef("--handle is required (run '%s --help')", c.Command.HelpName)
	}
	return c.Uint64("handle"), nil
}

func keysShow(c *cli.Context, e *env) error {
	h, err := requireHandle(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	k, err := findKey(c.Context, cl, h)
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, k)
	}
	p := &printer{w: e.stdout}
	p.printf("%-18s %d\n", "handle", k.Handle)
	p.printf("%-18s %s\n", "label", orDash(k.Label))
	if len(k.ID) > 0 {
		p.printf("%-18s %s\n", "id", hex.EncodeToString(k.ID))
	}
	p.printf("%-18s %s\n", "class", k.Class)
	p.printf("%-18s %s\n", "type", k.Type)
	p.printf("%-18s %s\n", "size", keySize(k))
	p.printf("%-18s %s\n", "check value", orDash(k.KCV))
	p.printf("%-18s %s\n", "owner", k.Owner)
	p.printf("%-18s %s\n", "shared with", orDash(strings.Join(k.SharedWith, ", ")))
	for _, a := range keyAttrs {
		p.printf("%-18s %s\n", a.name, yesNo(a.get(k)))
	}
	if len(k.PublicKey) > 0 {
		p.printf("%-18s %d bytes of PKIX DER (--json has it)\n", "public key", len(k.PublicKey))
	}
	if k.Origin != "" {
		p.printf("%-18s %s (moved here by keys migrate)\n", "origin", k.Origin)
	}
	return p.err
}

// specFlags describe a key to make or unwrap.
func specFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "type", Usage: "`TYPE` of key: aes, rsa, ec, generic-secret or hpke (an ML-KEM-768+X25519 wrapping key pair; required)"},
		&cli.IntFlag{Name: "bits", Usage: "key size in `BITS`: AES 128/192/256, RSA 2048/3072/4096, generic secret 8 to 4096 (multiple of 8), HPKE 768; default 256 for AES and generic secrets, 3072 for RSA, 768 for HPKE"},
		&cli.StringFlag{Name: "curve", Usage: "EC `CURVE`: P-256 or P-384", Value: "P-256"},
		&cli.StringFlag{Name: "label", Usage: "`LABEL` of the keys"},
		&cli.StringFlag{Name: "id", Usage: "key `ID` in hex (PKCS#11 CKA_ID)"},
		&cli.StringFlag{Name: "usage", Usage: "what the keys may do: `LIST` of encrypt, decrypt, sign, verify, wrap, unwrap"},
		&cli.BoolFlag{Name: "extractable", Usage: "the keys may leave the HSM wrapped"},
		&cli.BoolFlag{Name: "wrap-with-trusted", Usage: "the keys may leave only under a wrapping key a crypto officer marked trusted"},
	}
}

func mechanismFlag() cli.Flag {
	return &cli.StringFlag{Name: "mechanism", Usage: "wrap `MECHANISM`: " + mechanismList(), Value: string(hsmcore.AESKWP)}
}

// mechanismOf reads --mechanism.
func mechanismOf(c *cli.Context) (hsmcore.Mechanism, error) {
	mech, err := hsmcore.ParseMechanism(c.String("mechanism"))
	if err != nil {
		return "", usagef("--mechanism %s: not a wrap mechanism (%s)", c.String("mechanism"), mechanismList())
	}
	return mech, nil
}

func mechanismList() string {
	var ms []string
	for _, m := range hsmcore.Mechanisms {
		ms = append(ms, string(m))
	}
	return strings.Join(ms, ", ")
}

// generateSpec builds the key spec of keys generate's flags, and --count.
func generateSpec(c *cli.Context) (hsmcore.KeySpec, int, error) {
	s, err := specOf(c)
	if err != nil {
		return s, 0, err
	}
	if l := c.String("unwrap-template"); l != "" {
		t, err := parseTemplate(l)
		if err != nil {
			return s, 0, err
		}
		s.UnwrapTemplate = t
	}
	n := c.Int("count")
	if n < 1 || n > maxGenerate {
		return s, 0, usagef("--count %d: from 1 to %d", n, maxGenerate)
	}
	return s, n, nil
}

// specOf builds the key spec of specFlags.
func specOf(c *cli.Context) (hsmcore.KeySpec, error) {
	if c.String("type") == "" {
		return hsmcore.KeySpec{}, usagef("--type is required (run '%s --help')", c.Command.HelpName)
	}
	typ, err := parseKeyType(c.String("type"))
	if err != nil {
		return hsmcore.KeySpec{}, err
	}
	s := hsmcore.KeySpec{Type: typ, Bits: c.Int("bits"), Label: c.String("label"),
		Extractable: c.Bool("extractable"), WrapWithTrusted: c.Bool("wrap-with-trusted")}
	switch typ {
	case hsmcore.EC:
		if c.IsSet("bits") {
			return s, usagef("--bits is not for EC keys: give --curve")
		}
		s.Curve = c.String("curve")
	case hsmcore.RSA:
		if s.Bits == 0 {
			s.Bits = 3072
		}
	case hsmcore.HPKE:
		if s.Bits == 0 {
			s.Bits = 768
		}
	default:
		if s.Bits == 0 {
			s.Bits = 256
		}
	}
	if id := c.String("id"); id != "" {
		if s.ID, err = hex.DecodeString(id); err != nil {
			return s, usagef("--id %s: not hex", id)
		}
	}
	for _, u := range strings.Split(c.String("usage"), ",") {
		switch strings.TrimSpace(u) {
		case "":
		case "encrypt":
			s.Encrypt = true
		case "decrypt":
			s.Decrypt = true
		case "sign":
			s.Sign = true
		case "verify":
			s.Verify = true
		case "wrap":
			s.Wrap = true
		case "unwrap":
			s.Unwrap = true
		default:
			return s, usagef("--usage %s: not a usage (encrypt, decrypt, sign, verify, wrap, unwrap)", u)
		}
	}
	return s, nil
}

func keysGenerate(c *cli.Context, e *env) error {
	spec, n, err := generateSpec(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	keys, err := cl.GenerateKeys(c.Context, slices.Repeat([]hsmcore.KeySpec{spec}, n))
	if err != nil {
		return err
	}
	e.log.Info("keys generated", "count", len(keys), "type", spec.Type)
	if e.g.json {
		return writeJSONList(e.stdout, keys, countSummary{Count: len(keys)})
	}
	for _, k := range keys {
		if _, err := fmt.Fprintf(e.stdout, "generated key %d: %s %s, label %s, check value %s\n", k.Handle, k.Type, keySize(k), orDash(k.Label), orDash(k.KCV)); err != nil {
			return err
		}
	}
	return nil
}

func keysDelete(c *cli.Context, e *env) error {
	h, err := requireHandle(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	k, err := findKey(c.Context, cl, h)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("key %d (%s %s, label %s, check value %s, owner %s)", k.Handle, k.Type, keySize(k), orDash(k.Label), orDash(k.KCV), k.Owner)
	if !c.Bool("yes") {
		return usagef("not without --yes: this deletes %s from every member of the cluster; only a restore brings it back", what)
	}
	if err := cl.DeleteKey(c.Context, h); err != nil {
		return err
	}
	e.log.Warn("key deleted", "handle", h, "kcv", k.KCV)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Deleted hsmcore.KeyInfo `json:"deleted"`
		}{k})
	}
	_, err = fmt.Fprintf(e.stdout, "deleted %s\n", what)
	return err
}

// requireUint returns the uint64 flag name, which the command requires.
func requireUint(c *cli.Context, name string) (uint64, error) {
	if !c.IsSet(name) {
		return 0, usagef("--%s is required (run '%s --help')", name, c.Command.HelpName)
	}
	return c.Uint64(name), nil
}

func keysWrap(c *cli.Context, e *env) error {
	h, err := requireHandle(c)
	if err != nil {
		return err
	}
	wk, err := requireUint(c, "wrapping-key")
	if err != nil {
		return err
	}
	mech, err := mechanismOf(c)
	if err != nil {
		return err
	}
	out := c.String("out")
	if out == "" {
		return usagef("--out is required (run '%s --help')", c.Command.HelpName)
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s already exists: not overwritten", out)
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	k, err := findKey(c.Context, cl, h)
	if err != nil {
		return err
	}
	wrapped, err := cl.WrapKey(c.Context, wk, h, mech)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteNew(out, wrapped, 0o600); err != nil {
		return err
	}
	e.log.Info("key wrapped", "handle", h, "wrapping_key", wk, "mechanism", mech, "kcv", k.KCV)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Handle      uint64            `json:"handle"`
			WrappingKey uint64            `json:"wrapping_key"`
			Mechanism   hsmcore.Mechanism `json:"mechanism"`
			KCV         string            `json:"kcv"`
			File        string            `json:"file"`
			Size        int               `json:"size"`
		}{h, wk, mech, k.KCV, out, len(wrapped)})
	}
	_, err = fmt.Fprintf(e.stdout, "wrapped key %d (%s %s, check value %s) under key %d with %s: %d bytes written to %s\n",
		h, k.Type, keySize(k), orDash(k.KCV), wk, mech, len(wrapped), out)
	return err
}

// maxWrappedFile bounds the file keys unwrap reads.
const maxWrappedFile = 16 << 10

func keysUnwrap(c *cli.Context, e *env) error {
	spec, err := specOf(c)
	if err != nil {
		return err
	}
	wk, err := requireUint(c, "unwrapping-key")
	if err != nil {
		return err
	}
	mech, err := mechanismOf(c)
	if err != nil {
		return err
	}
	in := c.String("in")
	if in == "" {
		return usagef("--in is required (run '%s --help')", c.Command.HelpName)
	}
	wrapped, err := readBounded(in, maxWrappedFile)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	k, err := cl.UnwrapKey(c.Context, wk, mech, wrapped, spec)
	if err != nil {
		return err
	}
	e.log.Info("key unwrapped", "handle", k.Handle, "unwrapping_key", wk, "mechanism", mech, "kcv", k.KCV)
	if e.g.json {
		return writeJSON(e.stdout, k)
	}
	_, err = fmt.Fprintf(e.stdout, "unwrapped key %d: %s %s, label %s, check value %s, under key %d with %s\n",
		k.Handle, k.Type, keySize(k), orDash(k.Label), orDash(k.KCV), wk, mech)
	return err
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: not a file of this kind", path, limit)
	}
	return b, nil
}

func keysExport(c *cli.Context, e *env) error {
	if c.String("to") == "hsmbackup" {
		return keysExportPackage(c, e)
	}
	for _, f := range []string{"destination-ca", "label", "type", "attr", "dry-run"} {
		if c.IsSet(f) {
			return usagef("--%s is for --to hsmbackup: a cloud takes one key, --handle", f)
		}
	}
	h, err := requireHandle(c)
	if err != nil {
		return err
	}
	for _, f := range []string{"to", "wrapping-key", "out"} {
		if c.String(f) == "" {
			return usagef("--%s is required (run '%s --help')", f, c.Command.HelpName)
		}
	}
	svc, err := kmsimport.ParseService(c.String("to"))
	if err != nil {
		return usagef("--to: %v", err)
	}
	keyFile, err := readBounded(c.String("wrapping-key"), 64<<10)
	if err != nil {
		return err
	}
	pub, err := kmsimport.ParseWrappingKey(keyFile)
	if err != nil {
		return fmt.Errorf("%s: %w", c.String("wrapping-key"), err)
	}
	opts := kmsimport.Options{KID: c.String("kid"), Generator: "hsmbackup " + version}
	if p := c.String("import-token"); p != "" {
		if opts.ImportToken, err = readBounded(p, 64<<10); err != nil {
			return err
		}
	}
	// Before any connection: a missing token or kid fails here.
	if err := svc.Check(opts); err != nil {
		return usagef("%v", err)
	}
	out := c.String("out")
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s already exists: not overwritten", out)
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	k, err := findKey(c.Context, cl, h)
	if err != nil {
		return err
	}
	mech, err := svc.Mechanism(hsmcore.Mechanism(c.String("mechanism")), k.Type)
	if err != nil {
		return usagef("--mechanism: %v", err)
	}
	wrapped, err := cl.WrapKeyToPublic(c.Context, pub, h, mech)
	if err != nil {
		return err
	}
	files, err := svc.Files(wrapped, opts)
	if err != nil {
		return err
	}
	if err := os.Mkdir(out, 0o700); err != nil {
		return err
	}
	var names []string
	for _, f := range files {
		if err := atomicfile.WriteNew(filepath.Join(out, f.Name), f.Data, 0o600); err != nil {
			return err
		}
		names = append(names, filepath.Join(out, f.Name))
	}
	e.log.Info("key exported", "handle", h, "to", svc, "mechanism", mech, "kcv", k.KCV)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Handle    uint64            `json:"handle"`
			To        kmsimport.Service `json:"to"`
			Mechanism hsmcore.Mechanism `json:"mechanism"`
			KCV       string            `json:"kcv"`
			Files     []string          `json:"files"`
		}{h, svc, mech, k.KCV, names})
	}
	_, err = fmt.Fprintf(e.stdout, "exported key %d (%s %s, check value %s) for %s with %s: %s\n",
		h, k.Type, keySize(k), orDash(k.KCV), svc, mech, strings.Join(names, ", "))
	return err
}

// parseTemplate reads --unwrap-template: a comma-separated list of
// usages, extractable and wrap-with-trusted.
func parseTemplate(l string) (*hsmcore.UnwrapTemplate, error) {
	t := new(hsmcore.UnwrapTemplate)
	for _, a := range strings.Split(l, ",") {
		switch strings.TrimSpace(a) {
		case "encrypt":
			t.Encrypt = true
		case "decrypt":
			t.Decrypt = true
		case "sign":
			t.Sign = true
		case "verify":
			t.Verify = true
		case "wrap":
			t.Wrap = true
		case "unwrap":
			t.Unwrap = true
		case "extractable":
			t.Extractable = true
		case "wrap-with-trusted":
			t.WrapWithTrusted = true
		case "none", "":
		default:
			return nil, usagef("--unwrap-template %s: not an attribute (encrypt, decrypt, sign, verify, wrap, unwrap, extractable, wrap-with-trusted, none)", a)
		}
	}
	return t, nil
}
