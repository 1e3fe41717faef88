package objectives_test

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
)

// The DMD2 recipe (DMD + the GAN head on the critic's features): the one-step student lands near
// its class's modes, and the discriminator learns to tell data from the student's samples
// (mean sigmoid(D) higher on data than on fakes at the end of training).
func TestDMDAdversarialTrains(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for real (-short)")
	}
	path, teacher, m := trainTeacher(t)
	d0, a0 := evalNet(teacher, m, 1, true, 1)
	job := baseJob(t.TempDir(), "adversarial", 250)
	job.Seed = freshSeed(t)
	job.Params = map[string]any{"mode": "dmd2", "denoising_timesteps": []any{1000}, "cfg": 1.5,
		"generator_update_ratio": 1, "gen_gan_weight": 0.05, "disc_gan_weight": 0.1}
	job.Roles["teacher"] = config.Role{Weights: path}
	job.Roles["student"] = adam(3e-3, 0, 0.999)
	job.Roles["critic"] = adam(3e-3, 0, 0.999)
	job.Roles["discriminator"] = adam(1e-3, 0, 0.999)
	tr, ms := trainSteps(t, job, m, models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL})
	d1, a1 := evalNet(tr.Net("student"), m, 1, true, 1)
	n := len(ms)
	real0, fake0 := meanOf(ms, "d_real", 0, 20), meanOf(ms, "d_fake", 0, 20)
	real1, fake1 := meanOf(ms, "d_real", n-30, n), meanOf(ms, "d_fake", n-30, n)
	// The separation is a GAN's moving target: it grows while D learns and shrinks as the
	// generator catches up, so the bar is on its best 30-step window, not on the last one.
	sep, at := -1.0, 0
	for i := 30; i <= n; i++ {
		if d := meanOf(ms, "d_real", i-30, i) - meanOf(ms, "d_fake", i-30, i); d > sep {
			sep, at = d, i
		}
	}
	t.Logf("1-step dist %.3f acc %.2f → %.3f %.2f; D(real) %.3f → %.3f, D(fake) %.3f → %.3f; best separation %.3f (steps %d–%d)",
		d0, a0, d1, a1, real0, real1, fake0, fake1, sep, at-30, at)
	if !(d1 < 0.7*d0 && a1 >= 0.9) || math.IsNaN(d1) {
		t.Fatalf("dmd+adversarial: 1-step dist %.3f acc %.2f, teacher %.3f %.2f", d1, a1, d0, a0)
	}
	if !(sep > 0.1 && real0-fake0 < sep-0.05) {
		t.Fatalf("the discriminator does not learn to separate data from samples: best 30-step D(real)−D(fake) %.3f, first %.3f",
			sep, real0-fake0)
	}
}

// Standalone GAN refinement (no DMD): the head on the frozen teacher-initialised critic's features
// learns to separate data from the student's samples, and the student's one-step samples move
// toward the modes under the generator's GAN loss alone.
func TestAdversarialStandaloneTrains(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for real (-short)")
	}
	path, teacher, m := trainTeacher(t)
	d0 := dists(teacher, m, 16, 1, true, 1)
	job := baseJob(t.TempDir(), "adversarial", 200)
	job.Seed = freshSeed(t)
	job.Params = map[string]any{"mode": "standalone", "denoising_timesteps": []any{1000}, "sigma_max": 0.5,
		"generator_update_ratio": 1, "gen_gan_weight": 1.0, "disc_gan_weight": 1.0, "disc_backbone": false}
	job.Roles["teacher"] = config.Role{Weights: path}
	job.Roles["student"] = adam(1e-4, 0, 0.999)
	job.Roles["discriminator"] = adam(3e-3, 0, 0.999)
	tr, ms := trainSteps(t, job, m, models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL})
	d1 := dists(tr.Net("student"), m, 16, 1, true, 1)
	g, se := pairedGain(d0, d1)
	n := len(ms)
	real1, fake1 := meanOf(ms, "d_real", n-30, n), meanOf(ms, "d_fake", n-30, n)
	t.Logf("1-step mode distance over %d noises %.3f → %.3f (gain %.3f ± %.3f); D(real) %.3f → %.3f, D(fake) %.3f → %.3f",
		len(d0), mean(d0), mean(d1), g, se, meanOf(ms, "d_real", 0, 20), real1, meanOf(ms, "d_fake", 0, 20), fake1)
	if !(g > 3*se) || math.IsNaN(g) {
		t.Fatalf("standalone adversarial: 1-step gain %.3f ± %.3f is not 3 standard errors above 0", g, se)
	}
	if !(real1-fake1 > 0.1) {
		t.Fatalf("the discriminator does not separate data from samples: D(real) %.3f, D(fake) %.3f", real1, fake1)
	}
}
