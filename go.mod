module github.com/hsmbackup/hsmbackup

go 1.26

require (
	github.com/klauspost/compress v1.20.3
	github.com/tink-crypto/tink-go/v2 v2.9.0
	golang.org/x/crypto v0.53.0
)
