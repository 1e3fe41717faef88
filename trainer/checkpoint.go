package trainer

// Checkpoints. One checkpoint is a folder run/checkpoints/step-NNNNNN holding
//
//	<role>.safetensors        every role's weights, fp32 (Wan key layout for DiT roles)
//	optim.<role>.safetensors  AdamW moments m, v of each trainable role (flat [P])
//	state.json                step, AdamW step count per role, the loader cursor, the RNG scheme
//	job.yaml                  the resolved job (absolute paths)
//	config.json, latent.json  the networks' architecture and latent space (describe.go)
//
// written atomically: the files go to step-NNNNNN.tmp (each fsynced), the folder is fsynced and
// renamed, then run/checkpoints/latest (a one-line file naming the folder) is replaced by
// rename. A crash at any point leaves the previous checkpoint and `latest` intact.
//
// The step RNG is not state: every micro-batch's RNG is PCG(seed, step, micro)
// (objectives.StepRNG) and every sample's PCG(seed, step, micro, global sample index)
// (objectives.SampleRNG), so resuming at step n draws exactly what the straight run drew.
//
// On several ranks (dist.go) rank 0 writes the checkpoint; under train.shard: optimizer the AdamW
// moments are first gathered from the ranks' slices, so the files are the same as a single rank's
// and a run resumes from them at any world size (each rank takes its slice again).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

type state struct {
	Step      int            `json:"step"`
	Objective string         `json:"objective"`
	Seed      int64          `json:"seed"`
	RNG       string         `json:"rng"`
	Updates   map[string]int `json:"adamw_steps"`
	Loader    []byte         `json:"loader_cursor"`   // base64 in JSON
	World     int            `json:"world,omitempty"` // ranks of the run that wrote it (0: one)
}

// parseState reads a checkpoint's state.json and checks what Restore relies on: a step >= 0, an
// objective, AdamW step counts in [0, step] (a role steps at most once per optimizer step) and a
// loader cursor. Unknown fields are refused (a file of another format, not a state.json).
func parseState(b []byte) (state, error) {
	var st state
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return st, fmt.Errorf("not a checkpoint state: %w", err)
	}
	if dec.More() {
		return st, fmt.Errorf("not a checkpoint state: data after the JSON object")
	}
	var bad []string
	if st.Step < 0 {
		bad = append(bad, fmt.Sprintf("step %d is negative", st.Step))
	}
	if st.Objective == "" {
		bad = append(bad, "no objective")
	}
	names := make([]string, 0, len(st.Updates))
	for name := range st.Updates {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if u := st.Updates[name]; u < 0 || u > st.Step {
			bad = append(bad, fmt.Sprintf("adamw_steps of %s = %d, must be in [0, step %d]", name, u, st.Step))
		}
	}
	if len(st.Loader) == 0 {
		bad = append(bad, "no loader_cursor")
	}
	if len(bad) > 0 {
		return st, fmt.Errorf("invalid checkpoint state: %s", strings.Join(bad, "; "))
	}
	return st, nil
}

// saveHook, when set (tests), is called after each file of a checkpoint is written; an error aborts
// the save there, as a crash would.
var saveHook func(file string) error

// CheckpointDir is the folder of the checkpoint at step n.
func (t *Trainer) CheckpointDir(n int) string {
	return filepath.Join(t.Dir, "checkpoints", fmt.Sprintf("step-%06d", n))
}

// Save writes the checkpoint of the current step and points checkpoints/latest at it.
func (t *Trainer) Save() (string, error) {
	final := t.CheckpointDir(t.Step)
	if t.inflight > 0 { // Run settles a step before it checkpoints (optim.go launchGated)
		return "", fmt.Errorf("checkpoint %s: %d launched step(s) not settled: their bad-step count and AdamW steps are not known yet (internal)", final, t.inflight)
	}
	gathered := map[string][2][]float32{} // sharded roles' whole moments (every rank takes part)
	weights := map[string][]float32{}     // sharded DiTs' whole weights (train.shard full)
	for _, r := range t.roles {
		w, err := t.fullHost(r, r.W)
		if r.master != nil { // the fp32 master weights, gathered from the slices
			w, err = t.gatherSliced(r, r.master, "master weights")
		}
		if err != nil {
			return "", fmt.Errorf("checkpoint %s: %w", final, err)
		}
		weights[r.Spec.Name] = w
		switch {
		case r.sh != nil:
			m, v, err := t.gatherMoments(r)
			if err != nil {
				return "", fmt.Errorf("checkpoint %s: %w", final, err)
			}
			gathered[r.Spec.Name] = [2][]float32{m, v}
		case w != nil && r.v != nil: // a sharded DiT's moments (m nil with β1 = 0)
			var m []float32
			if r.m != nil {
				if m, err = t.fullHost(r, r.m); err != nil {
					return "", fmt.Errorf("checkpoint %s: %w", final, err)
				}
			}
			v, err := t.fullHost(r, r.v)
			if err != nil {
				return "", fmt.Errorf("checkpoint %s: %w", final, err)
			}
			gathered[r.Spec.Name] = [2][]float32{m, v}
		}
	}
	if !t.lead() {
		// Rank 0 writes it. The weights are the same on every rank: each refuses a non-finite one
		// as rank 0 does (role.save), so that all ranks stop together.
		for _, r := range t.roles {
			host := weights[r.Spec.Name] // gathered whole (train.shard full), as rank 0's
			if host == nil {
				host = make([]float32, r.W.Numel())
				r.W.Dev.ToHost(host, r.W)
			}
			if i := models.NonFinite(host); i >= 0 {
				return "", fmt.Errorf("checkpoint %s: role %s: weight %d = %g: %w", final, r.Spec.Name, i, host[i], ErrNonFinite)
			}
		}
		return final, nil
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp) // an aborted save leaves the previous checkpoints as they were
		}
	}()
	step := func(file string, err error) error {
		if err != nil {
			return fmt.Errorf("checkpoint %s: %s: %w", final, file, err)
		}
		if saveHook != nil {
			if err := saveHook(file); err != nil {
				return fmt.Errorf("checkpoint %s: %s: %w", final, file, err)
			}
		}
		return nil
	}
	st := state{Step: t.Step, Objective: t.Obj.Name(), Seed: t.Job.Seed, Updates: map[string]int{}, World: t.world(),
		RNG: "stateless: micro-batch RNG = PCG(seed, step, micro), sample RNG = PCG(seed, step, micro, global sample index)"}
	for _, r := range t.roles {
		name := r.Spec.Name
		f := name + ".safetensors"
		if err := step(f, r.save(filepath.Join(tmp, f), kernels.F32, weights[name])); err != nil {
			return "", err
		}
		if r.v == nil { // not trainable
			continue
		}
		st.Updates[name] = r.updates
		f = "optim." + name + ".safetensors"
		if err := step(f, writeMoments(filepath.Join(tmp, f), r, gathered[name])); err != nil {
			return "", err
		}
	}
	cur, err := t.opt.Source.Cursor()
	if err := step("loader cursor", err); err != nil {
		return "", err
	}
	st.Loader = cur
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", err
	}
	if err := step("state.json", writeFileSync(filepath.Join(tmp, "state.json"), append(b, '\n'))); err != nil {
		return "", err
	}
	if err := step("job.yaml", config.Save(t.Job, filepath.Join(tmp, "job.yaml"))); err != nil {
		return "", err
	}
	if err := step("config.json, latent.json", t.describe(tmp)); err != nil {
		return "", err
	}
	if err := syncDir(tmp); err != nil {
		return "", err
	}
	// Replace an existing folder of the same step (a re-run) only after the new one is complete.
	if _, err := os.Stat(final); err == nil {
		old := final + ".old"
		os.RemoveAll(old)
		if err := os.Rename(final, old); err != nil {
			return "", err
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	done = true
	parent := filepath.Dir(final)
	if err := syncDir(parent); err != nil {
		return "", err
	}
	if err := step("latest", writeFileSync(filepath.Join(parent, "latest.tmp"), []byte(filepath.Base(final)+"\n"))); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(parent, "latest.tmp"), filepath.Join(parent, "latest")); err != nil {
		return "", err
	}
	return final, syncDir(parent)
}

// writeMoments writes a role's AdamW moments: v, and m unless the role has none (β1 = 0, optim.go);
// whole buffers: gathered, when given (nil entries for the missing m), else r.m, r.v.
func writeMoments(path string, r *role, gathered [2][]float32) error {
	P := r.W.Numel()
	if r.Net != nil {
		P = r.Net.FullNumel()
	}
	var ts []models.NamedTensor
	for i, x := range []struct {
		name string
		t    *kernels.Tensor
	}{{"m", r.m}, {"v", r.v}} {
		if x.t == nil {
			continue
		}
		h := gathered[i]
		if h == nil {
			h = make([]float32, P)
			r.W.Dev.ToHost(h, x.t)
		}
		if i := models.NonFinite(h); i >= 0 {
			return fmt.Errorf("role %s: AdamW moment %s[%d] = %g: %w", r.Spec.Name, x.name, i, h[i], ErrNonFinite)
		}
		ts = append(ts, models.NamedTensor{Name: x.name, Shape: []int{P}, Data: h})
	}
	return models.WriteSafetensors(path, ts, kernels.F32, map[string]string{"adamw_steps": fmt.Sprint(r.updates)})
}

func writeFileSync(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// latestName is what checkpoints/latest names ("none" before the first checkpoint).
func (t *Trainer) latestName() string {
	b, err := os.ReadFile(filepath.Join(t.Dir, "checkpoints", "latest"))
	if err != nil {
		return "none"
	}
	return filepath.Join(t.Dir, "checkpoints", strings.TrimSpace(string(b)))
}

// RunOfCheckpoint is the run folder of a checkpoint folder RUN/checkpoints/step-NNNNNN, or "" for a
// checkpoint folder that is not inside a run.
func RunOfCheckpoint(ckpt string) string {
	parent := filepath.Dir(filepath.Clean(ckpt))
	if filepath.Base(parent) != "checkpoints" {
		return ""
	}
	return filepath.Dir(parent)
}

// ResolveCheckpoint turns a path into a checkpoint folder: a checkpoint folder itself, a
// checkpoints folder or a run folder (their `latest`).
func ResolveCheckpoint(path string) (string, error) {
	if _, err := os.Stat(filepath.Join(path, "state.json")); err == nil {
		return path, nil
	}
	for _, dir := range []string{path, filepath.Join(path, "checkpoints")} {
		b, err := os.ReadFile(filepath.Join(dir, "latest"))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(b))
		if name == "" || name != filepath.Base(name) || !strings.HasPrefix(name, "step-") {
			return "", fmt.Errorf("%s: %s names %q, not a checkpoint folder step-NNNNNN", path, filepath.Join(dir, "latest"), name)
		}
		ck := filepath.Join(dir, name)
		if _, err := os.Stat(filepath.Join(ck, "state.json")); err != nil {
			return "", fmt.Errorf("%s: %s names %s, which has no state.json", path, filepath.Join(dir, "latest"), ck)
		}
		return ck, nil
	}
	return "", fmt.Errorf("%s: not a run: expected a run folder (with checkpoints/latest), its checkpoints folder (with latest) or a checkpoint folder (with state.json)", path)
}

// Restore loads a checkpoint (see ResolveCheckpoint for the paths accepted) into the trainer:
// every role's weights, the AdamW moments and step counts, the step and the loader's cursor.
func (t *Trainer) Restore(path string) error {
	dir, err := ResolveCheckpoint(path)
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	st, err := parseState(b)
	if err != nil {
		return fmt.Errorf("resume: %s: %w", filepath.Join(dir, "state.json"), err)
	}
	if st.Objective != t.Obj.Name() {
		return fmt.Errorf("resume: %s was written by objective %s, this job is %s", dir, st.Objective, t.Obj.Name())
	}
	for _, r := range t.roles {
		name := r.Spec.Name
		if err := r.load(filepath.Join(dir, name+".safetensors")); err != nil {
			return fmt.Errorf("resume: role %s: %w", name, err)
		}
		if r.master != nil { // the file's fp32 values: W may hold them in bf16
			host, err := r.Net.LoadHost(filepath.Join(dir, name+".safetensors"))
			if err != nil {
				return fmt.Errorf("resume: role %s: %w", name, err)
			}
			r.setMaster(host)
		}
		if r.v == nil { // not trainable
			continue
		}
		p := filepath.Join(dir, "optim."+name+".safetensors")
		ts, _, err := models.ReadSafetensors(p)
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		for _, mv := range []struct {
			key string
			dst *kernels.Tensor
		}{{"m", r.m}, {"v", r.v}} {
			if mv.dst == nil { // β1 = 0: no first moment (optim.go); one in the file is not needed
				continue
			}
			P := r.W.Numel()
			if r.Net != nil {
				P = r.Net.FullNumel()
			}
			nt, ok := ts[mv.key]
			if !ok && mv.key == "m" {
				return fmt.Errorf("resume: %s has no first moment m (written with roles.%s.betas[0] = 0); this job's β1 is %g and needs one",
					p, name, r.cfg.Betas[0])
			}
			if !ok || len(nt.Data) != P {
				return fmt.Errorf("resume: %s: tensor %q missing or not %d values", p, mv.key, P)
			}
			if r.Net != nil && r.Net.Sharded() {
				r.Net.SetFullBuf(mv.dst, nt.Data)
				continue
			}
			if r.sh == nil {
				r.W.Dev.FromHost(mv.dst, nt.Data)
				continue
			}
			for _, o := range r.sh.owned() { // this rank's slice of the whole moments
				r.W.Dev.FromHost(mv.dst.View(r.sh.local(o[0]), o[1]-o[0]), nt.Data[o[0]:o[1]])
			}
		}
		u, ok := st.Updates[name]
		if !ok {
			return fmt.Errorf("resume: %s: no adamw_steps for role %s", filepath.Join(dir, "state.json"), name)
		}
		r.updates = u
		t.gateHost = true // the device's step counts (optim.go) follow at the next launch
	}
	if err := t.opt.Source.Restore(st.Loader); err != nil {
		return fmt.Errorf("resume: loader cursor: %w", err)
	}
	t.Step = st.Step
	t.logf("resumed from %s at step %d", dir, st.Step)
	return nil
}
