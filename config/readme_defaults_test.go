package config

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// readmeDefaults parses README.md's config reference table: key → the documented default (YAML).
func readmeDefaults(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Skip("no README.md beside the module:", err)
	}
	s := string(b)
	i := strings.Index(s, "### Config reference")
	if i < 0 {
		t.Fatal("README.md has no '### Config reference'")
	}
	s = s[i:]
	if j := strings.Index(s[1:], "\n## "); j >= 0 {
		s = s[:j+1]
	}
	out := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\| `([^`]*)` \\|").FindAllStringSubmatch(s, -1) {
		if _, dup := out[m[1]]; dup {
			t.Errorf("README's config reference lists `%s` twice", m[1])
		}
		out[m[1]] = m[2]
	}
	if len(out) < 40 {
		t.Fatalf("README's config reference: %d rows parsed, expected the whole table", len(out))
	}
	return out
}

// leaves flattens a YAML document into dotted keys (params, a free-form map, is one key; so is
// roles, whose roles the test reads apart).
func leaves(prefix string, v any, out map[string]any) {
	m, ok := v.(map[string]any)
	if !ok || prefix == "params" || prefix == "roles" {
		out[prefix] = v
		return
	}
	for k, e := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		leaves(key, e, out)
	}
}

// TestReadmeDefaultsAreLoaded reads the README's config reference (not the code's Defaults()) and
// checks it against what the loader resolves for a job that says nothing but two roles, each with
// one key set (a role with no key is no role to viper): role a's keys but warmup, role b's warmup,
// and every other key are the documented defaults; every documented key exists, and every key the
// loader resolves is documented.
func TestReadmeDefaultsAreLoaded(t *testing.T) {
	doc := readmeDefaults(t)
	j, err := loadFrom("roles.yaml", ".", []byte("roles:\n  a: {warmup: 7}\n  b: {lr: 0.5}\n"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	y, err := j.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := yaml.Unmarshal(y, &tree); err != nil {
		t.Fatal(err)
	}
	loaded := map[string]any{}
	leaves("", tree, loaded)
	roles, _ := loaded["roles"].(map[string]any)
	delete(loaded, "roles")
	for _, r := range []string{"a", "b"} {
		role, ok := roles[r].(map[string]any)
		if !ok {
			t.Fatalf("the loaded job has no role %s: %v", r, roles)
		}
		for k, v := range role {
			if (k == "warmup") == (r == "b") {
				loaded["roles.<role>."+k] = v
			}
		}
	}
	canon := func(v any) string {
		out, _ := yaml.Marshal(v)
		return strings.TrimSpace(string(out))
	}
	var keys []string
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		got, ok := loaded[k]
		if !ok {
			t.Errorf("README documents `%s`, which the loaded job does not have", k)
			continue
		}
		var want any
		if err := yaml.Unmarshal([]byte(doc[k]), &want); err != nil {
			t.Errorf("README's default of `%s`, %q: %v", k, doc[k], err)
			continue
		}
		if canon(want) != canon(got) {
			t.Errorf("README says `%s` defaults to %s; a job that leaves it out loads %s", k, canon(want), canon(got))
		}
	}
	for k := range loaded {
		if _, ok := doc[k]; !ok {
			t.Errorf("the loaded job has `%s`, which README's config reference does not document", k)
		}
	}
	t.Logf("%d documented defaults match the loaded job", len(keys))
}
