module github.com/hsmbackup/hsmbackup

go 1.26

require (
	github.com/klauspost/compress v1.20.3
	github.com/tink-crypto/tink-go/v2 v2.9.0
	github.com/urfave/cli/v2 v2.27.7
	golang.org/x/crypto v0.53.0
)

require (
	github.com/cpuguy83/go-md2man/v2 v2.0.7 // indirect
	github.com/russross/blackfriday/v2 v2.1.0 // indirect
	github.com/xrash/smetrics v0.0.0-20240521201337-686a1a2994c1 // indirect
)
