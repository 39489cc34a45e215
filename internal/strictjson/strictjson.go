// Package strictjson decodes JSON the way every format of this project
// wants it read: exactly one value, no unknown fields, nothing after it.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Unmarshal decodes exactly one JSON value from data into v, refusing
// unknown object fields and trailing data.
func Unmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
