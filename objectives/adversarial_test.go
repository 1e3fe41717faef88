package objectives

import (
	"math/rand/v2"
	"testing"
	"time"
)

// The generator's GAN gradient (standalone, a one-level list so that the sample is one graded
// forward) is the derivative of gen_gan; the discriminator's gradients (head and the critic's
// blocks up to the tap) are the derivative of disc_loss.
func TestAdversarialGradients(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	o, err := New("adversarial", map[string]any{
		"mode": "standalone", "denoising_timesteps": []float64{1000}, "generator_update_ratio": 2,
		"gen_gan_weight": 1.0, "disc_gan_weight": 1.0, "tap_layer": 0, "head_dim": 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, seed)
	b := testBatch(env, testShape, rand.New(rand.NewPCG(uint64(seed), 2)))
	directional(t, env, o, b, Student, "gen_gan", 2, 0.03)         // step 2: generator and discriminator
	directional(t, env, o, b, Discriminator, "disc_loss", 1, 0.03) // step 1: discriminator only
	directional(t, env, o, b, Critic, "disc_loss", 1, 0.03)
}

// The generator's GAN loss flows through the critic without updating it: with the discriminator
// on a frozen backbone, a generator step leaves the critic's G exactly zero while the student's and
// the head's are not.
func TestAdversarialLeavesCriticAlone(t *testing.T) {
	o, err := New("adversarial", map[string]any{
		"mode": "standalone", "generator_update_ratio": 1, "disc_backbone": false, "gen_gan_weight": 1.0,
	})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, 3)
	b := testBatch(env, testShape, rand.New(rand.NewPCG(3, 2)))
	up, err := o.Step(&Step{Step: 1, Accum: 1, RNG: StepRNG(3, 1, 0)}, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range up.Roles {
		if r == Critic {
			t.Fatalf("standalone without disc_backbone names the critic: %v", up.Roles)
		}
	}
	abs := func(name string) float64 {
		g := env.Roles[name].G
		h := make([]float32, g.Numel())
		env.Dev.ToHost(h, g)
		var s float64
		for _, v := range h {
			s += float64(max(v, -v))
		}
		return s
	}
	if c, s, d := abs(Critic), abs(Student), abs(Discriminator); c != 0 || s == 0 || d == 0 {
		t.Fatalf("Σ|G|: critic %g (want 0), student %g, discriminator %g (want > 0)", c, s, d)
	}
}
