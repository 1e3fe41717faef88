package trainer

import (
	"path/filepath"
	"time"

	"github.com/fewstep/fewstep/plots"
	"github.com/fewstep/fewstep/tensorboard"
)

// plot redraws RUN/plots/*.png from metrics.jsonl (package plots); Run calls it after every
// checkpoint and validation. Only the rank that writes metrics.jsonl draws; a failure is logged and
// training goes on (the curves are a view of metrics.jsonl, which is intact).
func (t *Trainer) plot() {
	if t.metrics == nil {
		return
	}
	if _, err := plots.Write(filepath.Join(t.Dir, "metrics.jsonl"), filepath.Join(t.Dir, "plots")); err != nil {
		t.logf("plots: %v", err)
	}
}

// openTensorBoard gives the metrics log a TensorBoard event file in RUN/tensorboard/ when
// train.tensorboard is set (`tensorboard --logdir RUN/tensorboard`).
func (t *Trainer) openTensorBoard(ml *metricsLog) error {
	if !t.Job.Train.TensorBoard {
		return nil
	}
	w, err := tensorboard.Create(filepath.Join(t.Dir, "tensorboard"))
	if err != nil {
		return err
	}
	ml.tb, ml.tbStart = w, time.Now()
	t.logf("tensorboard: %s", w.Path)
	return nil
}
