package main

import (
	"io"
	"time"

	"github.com/fewstep/fewstep/trainer"
	"github.com/schollz/progressbar/v3"
)

// tableBar is the distillation table's progress bar (demo, eval --teacher): rows done of all, the
// row in hand as the description, and the time elapsed. It predicts no time left: the rows differ
// in cost by 50× (the teacher at 50 steps against a student at 1), and before the first row is done
// the prediction read 0s for minutes.
func tableBar(w io.Writer, more ...progressbar.Option) *progressbar.ProgressBar {
	return progressbar.NewOptions(-1, append([]progressbar.Option{progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("eval"), progressbar.OptionShowCount(),
		progressbar.OptionThrottle(trainer.BarThrottle(w, 100*time.Millisecond)),
		progressbar.OptionSetPredictTime(false), progressbar.OptionSetElapsedTime(true)}, more...)...)
}
