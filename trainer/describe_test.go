package trainer

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
)

// A Wan config.json's text_len must be data.text_len: the loader pads every context to
// data.text_len and Wan pads it to text_len, so they must be the same number.
func TestModelConfigTextLen(t *testing.T) {
	job := config.Defaults()
	job.Model.Config = filepath.Join("..", "configs", "teacher", "config.json") // text_len 8, text_dim 32, 48 channels
	job.Data.TextLen = 12
	_, err := ModelConfig(&job, 48, 32)
	if err == nil || !strings.Contains(err.Error(), "data.text_len: 8") {
		t.Fatalf("text_len 8 vs data.text_len 12: %v", err)
	}
	job.Data.TextLen = 8
	if _, err := ModelConfig(&job, 48, 32); err != nil {
		t.Fatal(err)
	}
}

func TestLatentRoundTrip(t *testing.T) {
	job := config.Defaults()
	job.Data.Normalize, job.Data.Mean, job.Data.Std = "custom", []float64{1, 2}, []float64{3, 4}
	l := LatentOf(&job, models.Config{TextLen: 8, TextDim: 32}, 2, 5, 6, 4)
	dir := t.TempDir()
	if err := WriteLatent(dir, l); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLatent(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, l) || l.Synthetic {
		t.Fatalf("latent.json round trip: %+v, want %+v (not synthetic)", got, l)
	}
	if _, err := ReadLatent(t.TempDir()); err == nil {
		t.Fatal("no latent.json: no error")
	}
}
