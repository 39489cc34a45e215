package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMasterkeyCommands(t *testing.T) {
	kr := filepath.Join(t.TempDir(), "keyring")
	out := mustRun(t, "masterkey", "generate", "--keyring", kr, "--id", "backup-mk")
	if !strings.HasPrefix(out, "generated master key backup-mk v1") {
		t.Fatalf("generate: %q", out)
	}
	if fi, err := os.Stat(kr); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v, mode %v", err, fi.Mode())
	}
	out = mustRun(t, "masterkey", "rotate", "--keyring", kr)
	if !strings.HasPrefix(out, "rotated to master key backup-mk v2") {
		t.Fatalf("rotate: %q", out)
	}
	type key struct {
		MessageType string `json:"message_type"`
		ID          string `json:"key_id"`
		Version     int
		Current     bool
	}
	var keys []key
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, "--json", "masterkey", "list", "--keyring", kr)), "\n") { // JSON lines
		var one key
		if err := json.Unmarshal([]byte(line), &one); err != nil {
			t.Fatal(err)
		}
		if one.MessageType == "result" {
			keys = append(keys, one)
		}
	}
	if len(keys) != 2 || keys[0].Current || !keys[1].Current || keys[1].Version != 2 {
		t.Fatalf("list: %+v", keys)
	}
	// No key material is ever printed.
	file, _ := os.ReadFile(kr)
	table := mustRun(t, "masterkey", "list", "--keyring", kr)
	for _, line := range strings.Split(string(file), "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == "key" && strings.Contains(table, f[4]) {
			t.Fatal("list printed key material")
		}
	}
	// A keyring others can read is refused.
	os.Chmod(kr, 0o644)
	if _, _, err := run(context.Background(), "masterkey", "list", "--keyring", kr); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("0644 keyring: got %v, want a refusal naming 0600", err)
	}
	os.Chmod(kr, 0o600)
	if _, _, err := run(context.Background(), "masterkey", "generate", "--keyring", kr, "--id", "backup-mk"); err == nil {
		t.Fatal("generating an id already in the keyring succeeded")
	}
}
