#!/usr/bin/env bash
# layering.sh: the import rules that keep the house standing (see
# docs/ARCHITECTURE.md). Run by `make vet`.
#   1. the pipeline (backup, restore, migrate, kmsimport) depends on the HSM's contract, never
#      on the software HSM (hsmcore/device);
#   2. internal/ holds leaves: no package under internal/ imports a package
#      of this module outside internal/.
set -euo pipefail
GO=${GO:-go}
mod=$($GO list -m)
fail=0
if bad=$($GO list -deps ./backup/... ./restore/... ./migrate/... ./kmsimport/... | grep -E "^$mod/hsmcore/device(/|$)"); then
	echo "layering: backup, restore, migrate and kmsimport must not depend on the software HSM:" >&2
	echo "$bad" >&2
	fail=1
fi
for p in $($GO list ./internal/...); do
	if bad=$($GO list -f '{{join .Imports "\n"}}{{"\n"}}{{join .TestImports "\n"}}' "$p" | grep "^$mod/" | grep -v "^$mod/internal/"); then
		echo "layering: $p imports outside internal/: $bad" >&2
		fail=1
	fi
done
exit $fail
