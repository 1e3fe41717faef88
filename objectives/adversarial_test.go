package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// The generator's GAN gradient (standalone, a one-level list so that the sample is one graded
// forward) is the derivative of gen_gan; the discriminator's gradients (head and the critic's
// blocks up to the tap) are the derivative of disc_loss, approximated R1 included.
func TestAdversarialGradients(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	o, err := New("adversarial", map[string]any{
		"mode": "standalone", "denoising_timesteps": []float64{1000}, "generator_update_ratio": 2,
		"gen_gan_weight": 1.0, "disc_gan_weight": 1.0, "tap_layer": 0, "head_dim": 16,
		"r1_weight": 30.0, "r1_sigma": 0.05,
	})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, seed)
	b := testBatch(env, testShape, rand.New(rand.NewPCG(uint64(seed), 2)))
	directional(t, env, o, b, Student, "gen_gan", 2, 0.01)         // step 2: generator and discriminator
	directional(t, env, o, b, Discriminator, "disc_loss", 1, 0.01) // step 1: discriminator only
	directional(t, env, o, b, Critic, "disc_loss", 1, 0.01)
	// The R1 term alone: same check with the GAN weights at ~0.
	o2, _ := New("adversarial", map[string]any{
		"mode": "standalone", "denoising_timesteps": []float64{1000}, "generator_update_ratio": 2,
		"disc_gan_weight": 1e-9, "tap_layer": 0, "head_dim": 16, "r1_weight": 100.0, "r1_sigma": 0.3,
	})
	env2 := testEnv(t, o2, testShape, seed)
	directional(t, env2, o2, b, Discriminator, "r1", 1, 0.01)
	directional(t, env2, o2, b, Critic, "r1", 1, 0.01)
}

// The generator's GAN loss flows through the critic without updating it: a step with the generator's
// GAN weight 1 and the same step with weight 0 (same weights, same random draws) leave identical
// critic gradients (the discriminator loss's, through disc_backbone), while the student's differ.
func TestAdversarialLeavesCriticAlone(t *testing.T) {
	grads := func(w float64) (critic, student []float32) {
		o, err := New("adversarial", map[string]any{
			"mode": "standalone", "generator_update_ratio": 1, "disc_backbone": true, "gen_gan_weight": w,
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
		if len(up.Roles) != 3 {
			t.Fatalf("roles updated: %v, want discriminator, critic, student", up.Roles)
		}
		return hostOf(env.Dev, env.Roles[Critic].G), hostOf(env.Dev, env.Roles[Student].G)
	}
	c1, s1 := grads(1)
	c0, s0 := grads(0)
	var ds, cs float64
	for i := range c1 {
		if c1[i] != c0[i] {
			t.Fatalf("critic gradient %d: %g with the generator's GAN loss, %g without", i, c1[i], c0[i])
		}
		cs += math.Abs(float64(c1[i]))
	}
	for i := range s1 {
		ds += math.Abs(float64(s1[i] - s0[i]))
	}
	if cs == 0 || ds == 0 {
		t.Fatalf("Σ|G_critic| %g, Σ|ΔG_student| %g: both should be > 0", cs, ds)
	}
}
