package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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
	defaults, err := toMap(Defaults())
	if err != nil {
		t.Fatal(err)
	}
	roleDefaults, _ := toMap(Job{Roles: map[string]Role{"r": RoleDefaults}})
	canon := func(v any) string {
		out, _ := yaml.Marshal(v)
		return strings.TrimSpace(string(out))
	}
	for _, k := range keys(reflect.TypeOf(Job{}), "") {
		row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(k) + "` \\| `([^`]*)` \\|").FindStringSubmatch(readme)
		if row == nil {
			t.Errorf("README.md's config reference has no row for `%s` (with its default)", k)
			continue
		}
		// the documented default, read as YAML, equals the default Load gives
		var doc any
		if err := yaml.Unmarshal([]byte(row[1]), &doc); err != nil {
			t.Errorf("`%s`: default %q: %v", k, row[1], err)
			continue
		}
		var m any = defaults
		path := strings.Split(k, ".")
		if path[0] == "roles" {
			m, path = roleDefaults["roles"].(map[string]any)["r"], path[2:]
		}
		for _, p := range path {
			m = m.(map[string]any)[p]
		}
		if canon(doc) != canon(m) {
			t.Errorf("README says `%s` defaults to %s, Defaults() has %s", k, canon(doc), canon(m))
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
		j, err := load(f, nil, nil)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		// Paths are relative to the job's folder: what it reads from configs/ (the teacher) is there.
		paths := []string{j.Model.Config, j.Data.Path, j.Data.Heldout}
		for _, r := range j.Roles {
			paths = append(paths, r.Weights)
		}
		for _, p := range paths {
			if strings.HasPrefix(p, "../configs/") {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("%s names %s, which is not there (paths in a job file are relative to its folder)", f, p)
				}
			}
		}
	}
}
