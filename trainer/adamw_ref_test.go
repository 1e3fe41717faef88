package trainer

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// The optimizer step against a float64 computation written out here: two roles, the student
// stepped every step, the critic every other step (its own AdamW count for the bias correction);
// weight decay on the parameters whose table says so and not on the others; the gradient summed
// over grad_accum micro-batches and divided by it; clipped to clip_norm; lr with warmup and cosine.
// The objective writes known gradients, so nothing but the optimizer is under test.

// refGrad is the gradient the "test-adamw" objective adds for (role, step, micro, i).
func refGrad(role string, n, micro, i int) float64 {
	r := rand.New(rand.NewPCG(uint64(n)<<8|uint64(micro), uint64(len(role))<<16|uint64(i)))
	return r.NormFloat64() * (1 + float64(i%3))
}

type adamObj struct{ env *objectives.Env }

var adamTables = map[string]*objectives.CustomNet{
	objectives.Student: {Table: []models.Param{
		{Name: "w", Shape: []int{2, 3}, Offset: 0, Decay: true},
		{Name: "b", Shape: []int{3}, Offset: 6, Decay: false},
		{Name: "u", Shape: []int{4}, Offset: 9, Decay: true},
	}, Numel: 13},
	objectives.Critic: {Table: []models.Param{
		{Name: "n", Shape: []int{2}, Offset: 0, Decay: false},
		{Name: "c", Shape: []int{5}, Offset: 2, Decay: true},
	}, Numel: 7},
}

func init() {
	for _, tb := range adamTables {
		tb.Init = func(w []float32, rng *rand.Rand) {
			for i := range w {
				w[i] = float32(rng.NormFloat64())
			}
		}
	}
	objectives.Register("test-adamw", func(map[string]any) (objectives.Objective, error) { return &adamObj{}, nil })
}

func (o *adamObj) Name() string { return "test-adamw" }
func (o *adamObj) Roles() []objectives.RoleSpec {
	return []objectives.RoleSpec{
		{Name: objectives.Student, Trainable: true, Init: objectives.InitScratch, Custom: adamTables[objectives.Student]},
		{Name: objectives.Critic, Trainable: true, Init: objectives.InitScratch, Custom: adamTables[objectives.Critic]},
	}
}
func (o *adamObj) Setup(env *objectives.Env) error { o.env = env; return nil }
func (o *adamObj) Step(s *objectives.Step, _ *objectives.Batch) (objectives.Update, error) {
	roles := []string{objectives.Student}
	if s.Step%2 == 0 {
		roles = append(roles, objectives.Critic)
	}
	for _, name := range roles {
		G := o.env.Roles[name].G
		h := make([]float32, G.Numel())
		G.Dev.ToHost(h, G)
		for i := range h {
			h[i] += float32(refGrad(name, s.Step, s.Micro, i))
		}
		G.Dev.FromHost(G, h)
	}
	return objectives.Update{Roles: roles, Metrics: map[string]float64{"loss": 1}}, nil
}

// refLR is the schedule, written out: linear warmup to base over `warmup` steps, then cosine to 0
// at the last step.
func refLR(base float64, warmup, n, total int) float64 {
	if n <= warmup {
		return base * float64(n) / float64(warmup)
	}
	return base * 0.5 * (1 + math.Cos(math.Pi*float64(n-warmup)/float64(total-warmup)))
}

func TestAdamWAgainstFloat64(t *testing.T) {
	const steps, accum, clip = 9, 3, 4.0
	job := toyJob(t.TempDir(), steps)
	job.Objective = "test-adamw"
	job.Train.GradAccum = accum
	job.Train.ClipNorm = clip
	cfg := map[string]config.Role{
		objectives.Student: {LR: 0.05, Betas: []float64{0.9, 0.99}, Eps: 1e-3, WeightDecay: 0.5, Warmup: 2, Schedule: "cosine"},
		objectives.Critic:  {LR: 0.02, Betas: []float64{0.8, 0.9}, Eps: 1e-3, WeightDecay: 0.3, Warmup: 3, Schedule: "cosine"},
	}
	job.Roles = cfg
	tr, _ := newToy(t, job)
	type state struct {
		w, m, v []float64
		t       int // AdamW steps taken
	}
	ref := map[string]*state{}
	for name, tb := range adamTables {
		w0 := hostOf(tr.byName[name].W)
		s := &state{w: make([]float64, tb.Numel), m: make([]float64, tb.Numel), v: make([]float64, tb.Numel)}
		for i := range w0 {
			s.w[i] = float64(w0[i])
		}
		ref[name] = s
	}
	for n := 1; n <= steps; n++ {
		met, err := tr.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{objectives.Student, objectives.Critic} {
			if name == objectives.Critic && n%2 != 0 {
				if _, ok := met["grad_norm/"+name]; ok {
					t.Fatalf("step %d: the critic was stepped on an odd step", n)
				}
				continue
			}
			s, c, tb := ref[name], cfg[name], adamTables[name]
			g := make([]float64, tb.Numel)
			var sq float64
			for i := range g {
				for micro := 0; micro < accum; micro++ {
					g[i] += refGrad(name, n, micro, i)
				}
				g[i] /= accum
				sq += g[i] * g[i]
			}
			norm := math.Sqrt(sq)
			if got := met["grad_norm/"+name]; math.Abs(got-norm) > 1e-5*norm {
				t.Fatalf("step %d %s: gradient norm %v, reference %v", n, name, got, norm)
			}
			if norm > clip {
				for i := range g {
					g[i] *= clip / (norm + 1e-6)
				}
			}
			lr := refLR(c.LR, c.Warmup, n, steps)
			s.t++
			b1, b2 := c.Betas[0], c.Betas[1]
			for _, p := range tb.Table {
				wd := 0.0
				if p.Decay {
					wd = c.WeightDecay
				}
				for i := p.Offset; i < p.Offset+kernels.Numel(p.Shape); i++ {
					s.m[i] = b1*s.m[i] + (1-b1)*g[i]
					s.v[i] = b2*s.v[i] + (1-b2)*g[i]*g[i]
					mh := s.m[i] / (1 - math.Pow(b1, float64(s.t)))
					vh := s.v[i] / (1 - math.Pow(b2, float64(s.t)))
					s.w[i] = s.w[i]*(1-lr*wd) - lr*mh/(math.Sqrt(vh)+c.Eps)
				}
			}
			r := tr.byName[name]
			for _, x := range []struct {
				what string
				got  []float32
				want []float64
			}{{"W", hostOf(r.W), s.w}, {"m", hostOf(r.m), s.m}, {"v", hostOf(r.v), s.v}} {
				for i := range x.want {
					if d := math.Abs(float64(x.got[i]) - x.want[i]); d > 2e-5*(1+math.Abs(x.want[i])) {
						t.Fatalf("step %d %s: %s[%d] = %.8g, float64 reference %.8g", n, name, x.what, i, x.got[i], x.want[i])
					}
				}
			}
			if r.updates != s.t {
				t.Fatalf("step %d %s: %d AdamW steps, reference %d", n, name, r.updates, s.t)
			}
		}
	}
}
