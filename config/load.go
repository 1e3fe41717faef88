package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix is the prefix of the environment variables that override job keys:
// FEWSTEP_TRAIN_STEPS=100 sets train.steps, FEWSTEP_ROLES_STUDENT_LR=1e-4 sets roles.student.lr.
const EnvPrefix = "FEWSTEP_"

// Load resolves a job. Precedence, lowest to highest (later wins):
//
//  1. Defaults()
//  2. the YAML file at path ("" = no file)
//  3. FEWSTEP_* environment variables
//  4. sets, each "key=value" (dotted key, value parsed as a YAML scalar or flow list: "eval.steps=[1,2]")
//
// Every layer is checked against the schema: an unknown key is an error naming the key and where it
// came from (the file, the variable, or --set). The result is validated.
//
// A relative path in the file (out_dir, model.config, data.path, data.heldout, train.resume,
// roles.<role>.weights) is relative to the file's folder, so that a job file means the same from
// any working directory; one from the environment or --set is relative to the working directory,
// where it was typed.
func Load(path string, sets []string) (*Job, error) {
	return load(path, sets, os.Environ())
}

// LoadBytes is Load with the YAML file's contents given (a job built into the binary); name is
// what errors call it, and dir the folder the document's relative paths are relative to.
func LoadBytes(name, dir string, yamlDoc []byte, sets []string) (*Job, error) {
	return loadFrom(name, dir, yamlDoc, sets, os.Environ())
}

func load(path string, sets []string, environ []string) (*Job, error) {
	return loadFrom(path, filepath.Dir(path), nil, sets, environ)
}

// pathKeys are the job's keys that hold file paths (roles.*.weights: every role's).
var pathKeys = []string{"out_dir", "model.config", "data.path", "data.heldout", "train.resume", "roles.*.weights"}

// rebase joins dir before every relative path of a job file's settings m (pathKeys).
func rebase(m map[string]any, dir string) {
	var walk func(m map[string]any, key []string)
	walk = func(m map[string]any, key []string) {
		k := key[0]
		if len(key) == 1 {
			if p, ok := m[k].(string); ok && p != "" && !filepath.IsAbs(p) {
				m[k] = filepath.Join(dir, p)
			}
			return
		}
		if k == "*" {
			for _, v := range m {
				if sub, ok := v.(map[string]any); ok {
					walk(sub, key[1:])
				}
			}
			return
		}
		if sub, ok := m[k].(map[string]any); ok {
			walk(sub, key[1:])
		}
	}
	for _, k := range pathKeys {
		walk(m, strings.Split(k, "."))
	}
}

func loadFrom(path, dir string, doc []byte, sets []string, environ []string) (*Job, error) {
	merged, err := toMap(Defaults())
	if err != nil {
		return nil, err
	}
	if path != "" || doc != nil {
		v := viper.New()
		v.SetConfigType("yaml")
		if doc != nil {
			if err := v.ReadConfig(bytes.NewReader(doc)); err != nil {
				return nil, fmt.Errorf("config: reading %s: %w", path, err)
			}
		} else {
			v.SetConfigFile(path)
			if err := v.ReadInConfig(); err != nil {
				return nil, fmt.Errorf("config: reading %s: %w", path, err)
			}
		}
		file := v.AllSettings()
		if err := checkKeys(file, reflect.TypeOf(Job{}), ""); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		if k := nonFiniteIn(file, ""); k != "" {
			return nil, fmt.Errorf("config: %s: %s: want a finite number (not NaN or Inf)", path, k)
		}
		rebase(file, dir)
		deepMerge(merged, file)
	}
	// Environment, sorted so that the result does not depend on the order of os.Environ.
	var envs []string
	for _, kv := range environ {
		if strings.HasPrefix(kv, EnvPrefix) {
			envs = append(envs, kv)
		}
	}
	sort.Strings(envs)
	for _, kv := range envs {
		name, val, _ := strings.Cut(kv, "=")
		lower := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
		if !isConfigEnv(lower) {
			continue // another FEWSTEP_* variable (FEWSTEP_CUDA_KERNELS, FEWSTEP_TEST_SEED, ...)
		}
		key, ok := envKey(lower, reflect.TypeOf(Job{}))
		if !ok {
			return nil, fmt.Errorf("config: environment variable %s names no job key (e.g. FEWSTEP_TRAIN_STEPS for train.steps)", name)
		}
		if err := setKey(merged, key, val); err != nil {
			return nil, fmt.Errorf("config: environment variable %s: %w", name, err)
		}
	}
	for _, s := range sets {
		key, val, ok := strings.Cut(s, "=")
		if !ok || strings.TrimSpace(key) == "" {
			return nil, fmt.Errorf("config: --set %q: want key=value", s)
		}
		key = strings.ToLower(strings.TrimSpace(key))
		if err := checkPath(strings.Split(key, "."), reflect.TypeOf(Job{}), ""); err != nil {
			return nil, fmt.Errorf("config: --set %s: %w", s, err)
		}
		if err := setKey(merged, key, val); err != nil {
			return nil, fmt.Errorf("config: --set %s: %w", s, err)
		}
	}
	job := &Job{}
	if err := decode(merged, job); err != nil {
		where := path
		if where == "" {
			where = "defaults/overrides"
		}
		return nil, fmt.Errorf("config: %s: %w", where, err)
	}
	job.fillRoleDefaults()
	if err := job.Validate(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return job, nil
}

// Save writes the resolved job as YAML, atomically (temp file, fsync, rename), with every path
// made absolute (Abs), so that the file means the same from any working directory.
func Save(job *Job, path string) error {
	abs, err := job.Abs()
	if err != nil {
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	b, err := abs.YAML()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	_, werr := tmp.Write(b)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("config: save %s: %w", path, err)
	}
	return nil
}

// Abs returns a copy of the job with every file path (the keys of Load's doc) made absolute against the working
// directory. Load has already made a job file's relative paths relative to the file's folder; a
// saved job (Save) holds absolute paths, so it loads the same files from anywhere.
func (j *Job) Abs() (*Job, error) {
	c := *j
	c.Roles = make(map[string]Role, len(j.Roles))
	var err error
	abs := func(p *string) {
		if *p == "" || filepath.IsAbs(*p) || err != nil {
			return
		}
		*p, err = filepath.Abs(*p)
	}
	for _, p := range []*string{&c.OutDir, &c.Model.Config, &c.Data.Path, &c.Data.Heldout, &c.Train.Resume} {
		abs(p)
	}
	for name, r := range j.Roles {
		abs(&r.Weights)
		c.Roles[name] = r
	}
	return &c, err
}

// YAML is the job as a YAML document (the form Save writes and Load reads back).
func (j *Job) YAML() ([]byte, error) {
	m, err := toMap(*j)
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(m)
}

// toMap turns a job into the nested map[string]any that viper/mapstructure use, keyed by the
// mapstructure tags (the same names as the YAML keys).
func toMap(j Job) (map[string]any, error) {
	m := map[string]any{}
	if err := mapstructure.Decode(j, &m); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return normalize(m).(map[string]any), nil
}

// normalize turns structs left by mapstructure.Decode into maps, recursively.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
		return x
	}
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return v
	}
	switch rv.Kind() {
	case reflect.Struct:
		m := map[string]any{}
		if err := mapstructure.Decode(v, &m); err != nil {
			return v
		}
		return normalize(m)
	case reflect.Map:
		m := map[string]any{}
		for _, k := range rv.MapKeys() {
			m[fmt.Sprint(k.Interface())] = normalize(rv.MapIndex(k).Interface())
		}
		return m
	case reflect.Slice:
		if rv.IsNil() {
			return nil
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = normalize(rv.Index(i).Interface())
		}
		return out
	}
	return v
}

func decode(m map[string]any, job *Job) error {
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:      job,
		ErrorUnused: true,
		ZeroFields:  true,
		DecodeHook:  strictNumbers,
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(m); err != nil {
		// mapstructure's multi-line report → one line
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "decoding failed due to the following error(s):", "")), " ")
		return errors.New(msg)
	}
	return nil
}

// strictNumbers refuses what mapstructure would silently truncate: a non-integral number for an
// integer key (train.steps: 1.5), and text or booleans for numbers.
func strictNumbers(from, to reflect.Type, v any) (any, error) {
	isInt := func(k reflect.Kind) bool { return k >= reflect.Int && k <= reflect.Uint64 }
	isFloat := func(k reflect.Kind) bool { return k == reflect.Float32 || k == reflect.Float64 }
	if isFloat(from.Kind()) {
		if f := reflect.ValueOf(v).Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("want a finite number, got %v", f)
		}
	}
	switch {
	case isInt(to.Kind()) && isFloat(from.Kind()):
		f := reflect.ValueOf(v).Float()
		if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return nil, fmt.Errorf("want an integer, got %v", v)
		}
		return int64(f), nil
	case (isInt(to.Kind()) || isFloat(to.Kind())) && (from.Kind() == reflect.Bool || from.Kind() == reflect.String):
		return nil, fmt.Errorf("want a number, got %q", fmt.Sprint(v))
	case to.Kind() == reflect.Bool && from.Kind() != reflect.Bool:
		return nil, fmt.Errorf("want true or false, got %q", fmt.Sprint(v))
	case to.Kind() == reflect.String && from.Kind() != reflect.String:
		if isInt(from.Kind()) || isFloat(from.Kind()) || from.Kind() == reflect.Bool {
			return fmt.Sprint(v), nil // name: 7 → "7"
		}
	}
	return v, nil
}

// deepMerge merges src into dst: maps merge key by key, anything else (scalars, lists) replaces.
func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				deepMerge(dm, sm)
				continue
			}
			cp := map[string]any{}
			deepMerge(cp, sm)
			dst[k] = cp
			continue
		}
		dst[k] = v
	}
}

// setKey sets a dotted key to a value parsed as YAML ("100", "1e-4", "[1,2,4]", "true", "text").
func setKey(m map[string]any, key, raw string) error {
	var val any
	if err := yaml.Unmarshal([]byte(raw), &val); err != nil {
		val = raw
	}
	if val == nil && strings.TrimSpace(raw) == "" {
		val = ""
	}
	if k := nonFiniteIn(val, key); k != "" {
		return fmt.Errorf("%s = %s: want a finite number (not NaN or Inf)", k, raw)
	}
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
	return nil
}

// fieldsOf lists the mapstructure names of a struct's fields.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// checkKeys reports the first key of m (in sorted order) that the schema type t does not have.
func checkKeys(m map[string]any, t reflect.Type, prefix string) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		full := k
		if prefix != "" {
			full = prefix + "." + k
		}
		var ft reflect.Type
		switch t.Kind() {
		case reflect.Struct:
			f, ok := fieldsOf(t)[k]
			if !ok {
				return fmt.Errorf("unknown key %q", full)
			}
			ft = f
		case reflect.Map:
			ft = t.Elem()
		default:
			return fmt.Errorf("key %q: %s has no sub-keys", full, prefix)
		}
		if sub, ok := m[k].(map[string]any); ok {
			switch ft.Kind() {
			case reflect.Struct, reflect.Map:
				if err := checkKeys(sub, ft, full); err != nil {
					return err
				}
			case reflect.Interface:
				// free-form (params)
			default:
				return fmt.Errorf("key %q: want a %s, got a mapping", full, ft.Kind())
			}
		}
	}
	return nil
}

// checkPath checks a dotted key against the schema.
func checkPath(parts []string, t reflect.Type, prefix string) error {
	if len(parts) == 0 {
		return nil
	}
	full := parts[0]
	if prefix != "" {
		full = prefix + "." + parts[0]
	}
	switch t.Kind() {
	case reflect.Struct:
		ft, ok := fieldsOf(t)[parts[0]]
		if !ok {
			return fmt.Errorf("unknown key %q", full)
		}
		return checkPath(parts[1:], ft, full)
	case reflect.Map:
		return checkPath(parts[1:], t.Elem(), full)
	case reflect.Interface:
		return nil
	}
	return fmt.Errorf("unknown key %q: %s has no sub-keys", full, prefix)
}

// isConfigEnv says whether a FEWSTEP_* variable (lowercased, prefix removed) is a job override:
// it is a top-level scalar key exactly (FEWSTEP_SEED, FEWSTEP_OUT_DIR) or starts with a section
// (FEWSTEP_TRAIN_..., FEWSTEP_DATA_..., FEWSTEP_ROLES_..., FEWSTEP_PARAMS_...). Those must then
// name a key (a typo is an error); every other FEWSTEP_* variable belongs to someone else.
func isConfigEnv(name string) bool {
	for n, ft := range fieldsOf(reflect.TypeOf(Job{})) {
		switch ft.Kind() {
		case reflect.Struct, reflect.Map:
			if strings.HasPrefix(name, n+"_") {
				return true
			}
		default:
			if name == n {
				return true
			}
		}
	}
	return false
}

// envKey maps an environment variable's name (lowercased, prefix removed: "train_steps",
// "data_synth_text_dim", "roles_student_lr", "params_guidance") to a dotted key, following the
// schema so that keys with underscores resolve ("data.text_len", not "data.text.len").
func envKey(name string, t reflect.Type) (string, bool) {
	switch t.Kind() {
	case reflect.Struct:
		fields := fieldsOf(t)
		// longest field name first, so "heldout_count" wins over "heldout"
		names := make([]string, 0, len(fields))
		for n := range fields {
			names = append(names, n)
		}
		sort.Slice(names, func(a, b int) bool { return len(names[a]) > len(names[b]) })
		for _, n := range names {
			ft := fields[n]
			if name == n {
				return n, true
			}
			if rest, ok := strings.CutPrefix(name, n+"_"); ok {
				if sub, ok := envKey(rest, ft); ok {
					return n + "." + sub, true
				}
			}
		}
	case reflect.Map:
		// a map key (a role name) has no underscore; the rest goes to the element
		k, rest, ok := strings.Cut(name, "_")
		if t.Elem().Kind() == reflect.Interface {
			return name, name != ""
		}
		if !ok {
			return "", false
		}
		if sub, ok := envKey(rest, t.Elem()); ok {
			return k + "." + sub, true
		}
	case reflect.Interface:
		return name, name != ""
	}
	return "", false
}
