package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsValid(t *testing.T) {
	j := Defaults()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := load("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, j) {
		t.Fatalf("Load with no file != Defaults():\n%+v\n%+v", *got, j)
	}
}

func TestPrecedence(t *testing.T) {
	p := writeFile(t, `
name: demo
train:
  steps: 10
  log_every: 3
eval:
  steps: [1, 2]
roles:
  student:
    lr: 1.0e-4
    ema_decay: 0.99
params:
  guidance: 4.5
`)
	env := []string{"FEWSTEP_TRAIN_STEPS=20", "FEWSTEP_DATA_TEXT_LEN=12", "FEWSTEP_ROLES_STUDENT_LR=2e-4",
		"FEWSTEP_DATA_SYNTH_HELDOUT_COUNT=7", "FEWSTEP_PARAMS_GUIDANCE=5", "HOME=/x",
		"FEWSTEP_CUDA_KERNELS=/k", "FEWSTEP_TEST_AS_CLI=1", "FEWSTEP_ATTENTION=ref"} // not job keys: ignored
	j, err := load(p, []string{"train.steps=30", "eval.steps=[4]", "data.normalize=wan"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if j.Name != "demo" || j.Train.LogEvery != 3 {
		t.Errorf("file values lost: %+v", j)
	}
	if j.Train.Steps != 30 {
		t.Errorf("train.steps = %d, want 30 (--set wins over env 20 and file 10)", j.Train.Steps)
	}
	if j.Data.TextLen != 12 || j.Data.Synth.HeldoutCount != 7 {
		t.Errorf("env not applied: text_len %d heldout_count %d", j.Data.TextLen, j.Data.Synth.HeldoutCount)
	}
	if !reflect.DeepEqual(j.Eval.Steps, []int{4}) {
		t.Errorf("eval.steps = %v, want [4] (list replaced, not merged)", j.Eval.Steps)
	}
	st := j.Roles["student"]
	if st.LR != 2e-4 || st.EMADecay != 0.99 || !reflect.DeepEqual(st.Betas, []float64{0.9, 0.999}) || st.Eps != 1e-8 {
		t.Errorf("role = %+v", st)
	}
	if g, _ := j.Params["guidance"].(int); g != 5 {
		t.Errorf("params.guidance = %v (%T)", j.Params["guidance"], j.Params["guidance"])
	}
	if j.Data.Synth.Frames != 8 || j.Data.BatchSize != 8 {
		t.Errorf("defaults lost: %+v", j.Data)
	}
	// Save → Load round trip.
	out := filepath.Join(t.TempDir(), "sub", "job.yaml")
	if err := Save(j, out); err != nil {
		t.Fatal(err)
	}
	k, err := load(out, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if j, err = j.Abs(); err != nil { // Save writes every path absolute
		t.Fatal(err)
	}
	if !filepath.IsAbs(k.OutDir) {
		t.Errorf("saved out_dir %q is not absolute", k.OutDir)
	}
	if !reflect.DeepEqual(j, k) {
		t.Fatalf("Save/Load round trip differs:\n%+v\n%+v", j, k)
	}
}

func TestUnknownKeys(t *testing.T) {
	cases := []struct {
		file, set, env string
		want           []string
	}{
		{file: "train:\n  stpes: 3\n", want: []string{`"train.stpes"`, "job.yaml"}},
		{file: "trian: {steps: 3}\n", want: []string{`"trian"`, "job.yaml"}},
		{file: "roles:\n  student:\n    learning_rate: 1\n", want: []string{`"roles.student.learning_rate"`, "job.yaml"}},
		{file: "train: 3\n", want: []string{"train"}},
		{set: "data.synth.cuont=3", want: []string{`"data.synth.cuont"`, "--set"}},
		{env: "FEWSTEP_TRAIN_STPES=3", want: []string{"FEWSTEP_TRAIN_STPES"}},
		{env: "FEWSTEP_DATA_SYNTH_CUONT=3", want: []string{"FEWSTEP_DATA_SYNTH_CUONT"}},
		{set: "train.steps=many", want: []string{"steps"}},
		{set: "train.steps=1.5", want: []string{"train.steps", "want an integer"}},
		{set: "train.steps=true", want: []string{"train.steps", "want a number"}},
		{file: "model:\n  causal: yes\n", want: []string{"model.causal", "true or false"}},
		{file: "data:\n  normalize: zscore\n", want: []string{"data.normalize", "job.yaml"}},
		{file: "data:\n  normalize: custom\n  mean: [0]\n", want: []string{"data.mean"}},
		{file: "device: tpu\n", want: []string{"device"}},
		{set: "data.ode_pairs.count=8", want: []string{"data.ode_pairs.count", "roles.teacher.weights"}},
		{set: "data.ode_pairs.count=-1", want: []string{"data.ode_pairs.count"}},
		{file: "train: [\n", want: []string{"job.yaml"}},
		// NaN and Inf, as YAML writes them (.nan, .inf) and as an overflowing literal (1e400 = +Inf)
		{file: "roles:\n  student:\n    lr: .nan\n", want: []string{"roles.student.lr", "finite"}},
		{set: "roles.student.lr=.inf", want: []string{"lr", "finite"}},
		{set: "roles.student.eps=-.inf", want: []string{"eps", "finite"}},
		{set: "roles.student.betas=[0.9, .nan]", want: []string{"betas", "finite"}},
		{set: "roles.student.weight_decay=1e400", want: []string{"weight_decay", "1e400"}},
		{env: "FEWSTEP_TRAIN_CLIP_NORM=.nan", want: []string{"FEWSTEP_TRAIN_CLIP_NORM", "finite"}},
		{set: "data.cfg_dropout=.nan", want: []string{"cfg_dropout", "finite"}},
		{set: "sample.cfg=.inf", want: []string{"sample.cfg", "finite"}},
		{set: "sample.shift=.nan", want: []string{"sample.shift", "finite"}},
		{set: "params.guidance=.nan", want: []string{"params.guidance", "finite"}},
		{file: "params:\n  dmd:\n    weights: [1, .inf]\n", want: []string{"params.dmd.weights[1]", "finite"}},
		{set: "train.max_bad_steps=-1", want: []string{"train.max_bad_steps"}},
		{set: "train.noise=gpu", want: []string{"train.noise", `"gpu"`, "auto, host or device"}},
		{set: "data.synth.count=99999999999", want: []string{"data.synth", "limits"}},
		{set: "data.batch_size=1000000000", want: []string{"data.batch_size"}},
	}
	for _, c := range cases {
		path := ""
		if c.file != "" {
			path = writeFile(t, c.file)
		}
		var sets, env []string
		if c.set != "" {
			sets = []string{c.set}
		}
		if c.env != "" {
			env = []string{c.env}
		}
		_, err := load(path, sets, env)
		if err == nil {
			t.Errorf("%+v: no error", c)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q does not mention %s", c, err, w)
			}
		}
	}
}

func TestEnvKey(t *testing.T) {
	for name, want := range map[string]string{
		"train_steps":               "train.steps",
		"out_dir":                   "out_dir",
		"data_synth_heldout_count":  "data.synth.heldout_count",
		"data_heldout":              "data.heldout",
		"model_local_attn_frames":   "model.local_attn_frames",
		"roles_critic_weight_decay": "roles.critic.weight_decay",
		"params_exit_steps":         "params.exit_steps",
	} {
		got, ok := envKey(name, reflect.TypeOf(Job{}))
		if !ok || got != want {
			t.Errorf("envKey(%s) = %q %v, want %q", name, got, ok, want)
		}
	}
}

// A relative path in a job file is relative to the file's folder, whatever the working directory;
// one from FEWSTEP_* or --set is relative to the working directory; an absolute one is kept.
func TestJobFilePathsRelativeToFile(t *testing.T) {
	jobs := filepath.Join(t.TempDir(), "project", "jobs")
	if err := os.MkdirAll(jobs, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(jobs, "job.yaml")
	doc := `out_dir: ../runs/a
model: {config: teacher/config.json}
data: {path: ../data/train.arrow, heldout: ../data/heldout.arrow}
train: {resume: ../runs/a/checkpoints/step-000010}
objective: dmd
roles:
  teacher: {weights: teacher/model.safetensors}
  critic: {weights: /abs/critic.safetensors, lr: 1.0e-4}
  student: {lr: 1.0e-4}
`
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // elsewhere
	j, err := load(p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	project := filepath.Dir(jobs)
	for _, c := range []struct{ key, got, want string }{
		{"out_dir", j.OutDir, filepath.Join(project, "runs", "a")},
		{"model.config", j.Model.Config, filepath.Join(jobs, "teacher", "config.json")},
		{"data.path", j.Data.Path, filepath.Join(project, "data", "train.arrow")},
		{"data.heldout", j.Data.Heldout, filepath.Join(project, "data", "heldout.arrow")},
		{"train.resume", j.Train.Resume, filepath.Join(project, "runs", "a", "checkpoints", "step-000010")},
		{"roles.teacher.weights", j.Roles["teacher"].Weights, filepath.Join(jobs, "teacher", "model.safetensors")},
		{"roles.critic.weights", j.Roles["critic"].Weights, "/abs/critic.safetensors"},
		{"roles.student.weights", j.Roles["student"].Weights, ""},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.key, c.got, c.want)
		}
	}
	// The same keys from the environment and --set stay relative to the working directory.
	j, err = load(p, []string{"data.path=here/train.arrow", "roles.teacher.weights=t.safetensors"},
		[]string{"FEWSTEP_OUT_DIR=runs/b", "FEWSTEP_MODEL_CONFIG=c.json"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Data.Path != "here/train.arrow" || j.Roles["teacher"].Weights != "t.safetensors" || j.OutDir != "runs/b" || j.Model.Config != "c.json" {
		t.Errorf("--set / FEWSTEP_* paths were moved: data.path %q, teacher %q, out_dir %q, model.config %q",
			j.Data.Path, j.Roles["teacher"].Weights, j.OutDir, j.Model.Config)
	}
	if j.Data.Heldout != filepath.Join(project, "data", "heldout.arrow") {
		t.Errorf("data.heldout from the file = %q", j.Data.Heldout)
	}
	// A built-in document resolves against the folder it is given.
	j, err = LoadBytes("built-in", "configs", []byte(doc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Model.Config != filepath.Join("configs", "teacher", "config.json") || j.OutDir != filepath.Join("runs", "a") {
		t.Errorf("LoadBytes: model.config %q, out_dir %q", j.Model.Config, j.OutDir)
	}
}
