package main

import "github.com/urfave/cli/v2"

// Flags shared by the commands that talk to an HSM daemon. Each call
// makes a new flag: urfave/cli keeps state in flags, so commands do not
// share them.
func addrFlag() cli.Flag {
	return &cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` of the HSM daemon"}
}

func manufacturerRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "manufacturer-root", Usage: "PEM `FILE` of the manufacturer root CA(s) that certify HSM device keys"}
}

func operatorRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "operator-root", Usage: "PEM `FILE` of the operator root CA(s) that certify HSM device keys"}
}

func passwordFileFlag() cli.Flag {
	return &cli.StringFlag{Name: "password-file", Usage: "`FILE` (mode 0600) whose first line is the password, or - for stdin; default: $" + passwordFileEnv +
		", else the cluster entry's password_file, else the password is read from $" + passwordEnv}
}

// expectFlags narrow what an attestation must show; unset, they default to
// what the certificates from the trusted roots name.
func expectFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "expect-serial", Usage: "require the HSM's `SERIAL`"},
		&cli.StringFlag{Name: "expect-class", Usage: "require hardware `CLASS` (default: the class the manufacturer certified)"},
		&cli.StringFlag{Name: "expect-manufacturer", Usage: "require manufacturer `NAME` (default: the one the manufacturer root names)"},
		&cli.StringFlag{Name: "expect-operator", Usage: "require operator `NAME` (default: the one the operator root names)"},
		&cli.StringFlag{Name: "min-firmware", Usage: "require firmware `X.Y.Z` or newer"},
	}
}

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

// serviceFlags are the flags of the commands that work on backups. Each
// may also be set in the --config file; a flag wins over the file.
// --config, --store and --json are global flags too.
func serviceFlags() []cli.Flag {
	return append([]cli.Flag{
		configFlag(),
		storeFlag(),
		timeoutFlag(),
		&cli.StringFlag{Name: "signing-key", Usage: "manifest signing key `FILE` (PEM, mode 0600)"},
		&cli.StringFlag{Name: "public-key", Usage: "manifest public key `FILE` (PEM); default: the signing key's"},
		jsonFlag(),
	}, masterKeyFlags()...)
}

// configFlag and storeFlag have no EnvVars: urfave/cli would give a
// command's own flag the variable's value and so let it beat the global
// flag given explicitly. globalsOf reads the variables instead, after
// every flag (docs/CLI.md, "Precedence").
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "YAML config `FILE` (see docs/CLI.md); default: $" + configEnv}
}

func storeFlag() cli.Flag {
	return &cli.StringFlag{Name: "store", Usage: "store `URL`: file://DIR, or s3://BUCKET[/PREFIX] with optional parameters " +
		"endpoint=URL (http:// for plain HTTP), region=REGION, sse=s3|kms, kms-key-id=ID (with sse=kms); " +
		"S3 credentials from the AWS environment; default: $" + storeEnv + ", else the config's store"}
}

func timeoutFlag() cli.Flag {
	return &cli.DurationFlag{Name: "timeout", Usage: "`DURATION` each call to an HSM may take, and an image transfer may go without progress (default 30s)"}
}

// claimFlag is --claim: the claim files of the new HSMs a command sets up.
func claimFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "claim", Usage: "claim `FILE` of a new HSM, as 'hsm manufacture' wrote it (mode 0600; repeatable): only its holder sets the HSM up"}
}
