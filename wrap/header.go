package wrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Header layout constants; docs/FORMATS.md section 8 is normative.
const (
	magic = "HSMWRP\r\n"

	// Version is the envelope format version this package reads and writes.
	Version = 1

	// suiteDARE is body suite 1: DARE 2.0 (github.com/minio/sio), AES-256-GCM.
	suiteDARE = 1

	flagEmptyBody = 0x01

	// ObjectIDSize is the length of an envelope's random object id.
	ObjectIDSize = 16

	coreSize   = len(magic) + 1 + ObjectIDSize + 1 + 1 // 27
	fixedSize  = coreSize + 2                          // core, u16be(n)
	macSize    = 32
	dekSize    = 32
	minSection = 1 + 1 + 1 + 2 + 1 // count, one stanza: str8(type) of 1, no args, bytes16(body) of 1
)

// Limits on stanzas, checked when writing and when parsing.
const (
	MaxStanzas       = 16   // stanzas in one header
	MaxStanzaTypeLen = 32   // bytes of [a-z0-9-]
	MaxStanzaArgs    = 8    // arguments of one stanza
	MaxStanzaArgLen  = 255  // bytes of printable ASCII, no space
	MaxStanzaBody    = 8192 // bytes of a stanza body
)

// A Stanza is one recipient's wrapping of an envelope's data key, as stored
// in the header: a type naming the recipient kind, arguments naming the key
// (so that an identity finds its stanza without trying the others), and the
// wrapped key. The header MAC authenticates every stanza.
type Stanza struct {
	Type string   // 1 to MaxStanzaTypeLen bytes of [a-z0-9-]
	Args []string // 0 to MaxStanzaArgs arguments, each 1 to MaxStanzaArgLen bytes of [!-~]
	Body []byte   // 1 to MaxStanzaBody bytes
}

// Header is an envelope's parsed header. ReadHeader returns it without any
// key: nothing in it is authenticated until an identity has unwrapped the
// data key and checked the MAC, as Decrypt does.
type Header struct {
	// ObjectID is random per envelope and kept by Rewrap; it is part of the
	// header core that the body keys are derived from.
	ObjectID [ObjectIDSize]byte
	// EmptyBody is set when the plaintext is empty and so the body has no
	// bytes at all (DARE has no empty packages).
	EmptyBody bool
	// Stanzas hold the data key wrapped to each recipient, in order.
	Stanzas []Stanza
	// MAC is HMAC-SHA256 over the header up to the MAC, keyed from the data key.
	MAC [macSize]byte
}

// core returns C, the header's first 27 bytes: magic, version, object id,
// flags and body suite. The body keys derive from it; Rewrap keeps it.
func (h *Header) core() []byte {
	c := make([]byte, 0, coreSize)
	c = append(c, magic...)
	c = append(c, Version)
	c = append(c, h.ObjectID[:]...)
	var flags byte
	if h.EmptyBody {
		flags |= flagEmptyBody
	}
	return append(c, flags, suiteDARE)
}

// authenticated returns the header bytes that the MAC covers: everything up
// to the MAC.
func (h *Header) authenticated() ([]byte, error) {
	if len(h.Stanzas) < 1 || len(h.Stanzas) > MaxStanzas {
		return nil, fmt.Errorf("%w: %d stanzas, want 1 to %d", ErrMalformed, len(h.Stanzas), MaxStanzas)
	}
	sec := []byte{byte(len(h.Stanzas))}
	for i, s := range h.Stanzas {
		if err := checkStanza(s); err != nil {
			return nil, fmt.Errorf("stanza %d: %w", i, err)
		}
		sec = append(sec, byte(len(s.Type)))
		sec = append(sec, s.Type...)
		sec = append(sec, byte(len(s.Args)))
		for _, a := range s.Args {
			sec = append(sec, byte(len(a)))
			sec = append(sec, a...)
		}
		sec = binary.BigEndian.AppendUint16(sec, uint16(len(s.Body)))
		sec = append(sec, s.Body...)
	}
	if len(sec) > 0xffff {
		return nil, fmt.Errorf("%w: stanzas take %d bytes, at most 65535", ErrMalformed, len(sec))
	}
	b := h.core()
	b = binary.BigEndian.AppendUint16(b, uint16(len(sec)))
	return append(b, sec...), nil
}

// MarshalBinary returns the header's encoding: what ReadHeader parsed, byte
// for byte.
func (h *Header) MarshalBinary() ([]byte, error) {
	b, err := h.authenticated()
	if err != nil {
		return nil, err
	}
	return append(b, h.MAC[:]...), nil
}

// Recipients describes the keys the envelope is wrapped to, one per stanza,
// as "type arg arg…", for error messages and listings.
func (h *Header) Recipients() []string {
	out := make([]string, len(h.Stanzas))
	for i, s := range h.Stanzas {
		out[i] = s.String()
	}
	return out
}

// String returns the stanza's type and arguments; never its body.
func (s Stanza) String() string {
	var b bytes.Buffer
	b.WriteString(s.Type)
	for _, a := range s.Args {
		b.WriteByte(' ')
		b.WriteString(a)
	}
	return b.String()
}

func checkStanza(s Stanza) error {
	if len(s.Type) < 1 || len(s.Type) > MaxStanzaTypeLen {
		return fmt.Errorf("%w: stanza type of %d bytes", ErrMalformed, len(s.Type))
	}
	for i := 0; i < len(s.Type); i++ {
		if c := s.Type[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("%w: stanza type has byte %#02x", ErrMalformed, c)
		}
	}
	if len(s.Args) > MaxStanzaArgs {
		return fmt.Errorf("%w: %d stanza arguments", ErrMalformed, len(s.Args))
	}
	for _, a := range s.Args {
		if err := checkArg(a); err != nil {
			return err
		}
	}
	if len(s.Body) < 1 || len(s.Body) > MaxStanzaBody {
		return fmt.Errorf("%w: stanza body of %d bytes", ErrMalformed, len(s.Body))
	}
	return nil
}

func checkArg(a string) error {
	if len(a) < 1 || len(a) > MaxStanzaArgLen {
		return fmt.Errorf("%w: stanza argument of %d bytes", ErrMalformed, len(a))
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < '!' || c > '~' {
			return fmt.Errorf("%w: stanza argument has byte %#02x", ErrMalformed, c)
		}
	}
	return nil
}

// ReadHeader reads an envelope's header from r and no byte more, so that r
// is left at the start of the body. It checks the structure only (checks 1
// and 2 of docs/FORMATS.md 8.4): nothing is authenticated yet.
func ReadHeader(r io.Reader) (*Header, error) {
	h, _, err := readHeader(r)
	return h, err
}

// readHeader is ReadHeader that also returns the header's bytes.
func readHeader(r io.Reader) (*Header, []byte, error) {
	fixed := make([]byte, fixedSize)
	if n, err := io.ReadFull(r, fixed); err != nil {
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			return nil, nil, fmt.Errorf("read header: %w", err)
		}
		// A short input that is not even a prefix of the magic is not an
		// envelope; otherwise it is one cut short.
		m := min(n, len(magic))
		if string(fixed[:m]) != magic[:m] {
			return nil, nil, fmt.Errorf("header: %w: bad magic", ErrMalformed)
		}
		return nil, nil, fmt.Errorf("header: %w after %d bytes", ErrTruncated, n)
	}
	if string(fixed[:len(magic)]) != magic {
		return nil, nil, fmt.Errorf("header: %w: bad magic", ErrMalformed)
	}
	if v := fixed[len(magic)]; v != Version {
		return nil, nil, fmt.Errorf("header: %w: version %d", ErrUnsupportedVersion, v)
	}
	h := new(Header)
	copy(h.ObjectID[:], fixed[len(magic)+1:])
	flags, suite := fixed[coreSize-2], fixed[coreSize-1]
	if flags&^flagEmptyBody != 0 {
		return nil, nil, fmt.Errorf("header: %w: reserved flags %#02x", ErrMalformed, flags)
	}
	h.EmptyBody = flags&flagEmptyBody != 0
	if suite != suiteDARE {
		return nil, nil, fmt.Errorf("header: %w: body suite %d", ErrUnsupportedVersion, suite)
	}
	n := int(binary.BigEndian.Uint16(fixed[coreSize:]))
	if n < minSection {
		return nil, nil, fmt.Errorf("header: %w: stanza section of %d bytes", ErrMalformed, n)
	}
	raw := make([]byte, fixedSize+n+macSize)
	copy(raw, fixed)
	if got, err := io.ReadFull(r, raw[fixedSize:]); err != nil {
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			return nil, nil, fmt.Errorf("read header: %w", err)
		}
		return nil, nil, fmt.Errorf("header: %w after %d of %d bytes", ErrTruncated, fixedSize+got, len(raw))
	}
	stanzas, err := parseStanzas(raw[fixedSize : fixedSize+n])
	if err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	h.Stanzas = stanzas
	copy(h.MAC[:], raw[fixedSize+n:])
	return h, raw, nil
}

// parseStanzas parses the stanza section, which must be consumed exactly.
func parseStanzas(sec []byte) ([]Stanza, error) {
	p := parser{b: sec}
	count := int(p.u8())
	if count < 1 || count > MaxStanzas {
		return nil, fmt.Errorf("%w: %d stanzas, want 1 to %d", ErrMalformed, count, MaxStanzas)
	}
	stanzas := make([]Stanza, 0, count)
	for i := range count {
		var s Stanza
		s.Type = string(p.bytes(int(p.u8())))
		nargs := int(p.u8())
		if nargs > MaxStanzaArgs {
			return nil, fmt.Errorf("stanza %d: %w: %d arguments", i, ErrMalformed, nargs)
		}
		if nargs > 0 {
			s.Args = make([]string, nargs)
			for j := range s.Args {
				s.Args[j] = string(p.bytes(int(p.u8())))
			}
		}
		s.Body = bytes.Clone(p.bytes(int(p.u16())))
		if p.err != nil {
			return nil, fmt.Errorf("stanza %d: %w: runs past the stanza section", i, ErrMalformed)
		}
		if err := checkStanza(s); err != nil {
			return nil, fmt.Errorf("stanza %d: %w", i, err)
		}
		stanzas = append(stanzas, s)
	}
	if len(p.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last stanza", ErrMalformed, len(p.b))
	}
	return stanzas, nil
}

var errShort = errors.New("short")

// parser reads big-endian fields; after the first short read every read
// returns zeros and err is set.
type parser struct {
	b   []byte
	err error
}

func (p *parser) bytes(n int) []byte {
	if p.err != nil || n > len(p.b) {
		p.err = errShort
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) u8() byte {
	if b := p.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (p *parser) u16() uint16 {
	if b := p.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}
