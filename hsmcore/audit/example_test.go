package audit_test

import (
	"bytes"
	"fmt"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

func Example() {
	// The HSM appends an entry for each operation and keeps the Head,
	// which it signs with its device key (not shown).
	log := audit.New(audit.Head{})
	t := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	var stored bytes.Buffer
	for _, e := range []audit.Entry{
		log.Append(t, "alice", "login", "", "ok"),
		log.Append(t.Add(time.Second), "alice", "key.create", "0x0000002a", "ok"),
		log.Append(t.Add(2*time.Second), "bob", "key.delete", "0x0000002a", "denied"),
	} {
		if err := audit.Encode(&stored, e); err != nil {
			panic(err)
		}
	}
	head := log.Head()

	// An auditor reads the stored log and checks it against the signed Head.
	entries, err := audit.Decode(bytes.NewReader(stored.Bytes()))
	if err != nil {
		panic(err)
	}
	fmt.Println(audit.Verify(entries, &head))

	// Someone who can edit the stored log turns bob's denial into success.
	entries[2].Result = "ok"
	fmt.Println(audit.Verify(entries, &head))

	// Or drops the entry and its hash altogether.
	fmt.Println(audit.Verify(entries[:2], &head))
	// Output:
	// <nil>
	// audit: entry 3: hash mismatch (edited): audit: chain broken
	// audit: entry 2: head mismatch (tail removed or log rewritten): want seq 3: audit: chain broken
}
