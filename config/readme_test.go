package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// keys lists every dotted key of the schema; map elements appear as <role>, free-form maps stop.
func keys(t reflect.Type, prefix string) []string {
	var out []string
	for name, ft := range fieldsOf(t) {
		k := name
		if prefix != "" {
			k = prefix + "." + name
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, keys(ft, k)...)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out = append(out, keys(ft.Elem(), k+".<role>")...)
		default:
			out = append(out, k)
		}
	}
	return out
}

// The README's config reference documents every key of the schema, with the default Defaults() has.
func TestReadmeDocumentsEveryKey(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Skip("no README.md beside the module:", err)
	}
	readme := string(b)
	for _, k := range keys(reflect.TypeOf(Job{}), "") {
		if !strings.Contains(readme, "| `"+k+"` |") {
			t.Errorf("README.md's config reference has no row for `%s`", k)
		}
	}
}

// Every shipped job in configs/ loads strictly and validates.
func TestShippedConfigsLoad(t *testing.T) {
	files, _ := filepath.Glob("../configs/*.yaml")
	if len(files) == 0 {
		t.Skip("no configs/*.yaml")
	}
	for _, f := range files {
		if _, err := load(f, nil, nil); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
