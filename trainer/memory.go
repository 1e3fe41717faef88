package trainer

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// checkMemory refuses, before anything is allocated, roles whose weights, gradients and AdamW
// moments (fp32: 4 bytes each, 4 copies for a trainable role, 1 for a frozen one) exceed the
// device's memory: the CPU's MemTotal, or a GPU's total (MemInfo). Activations come on top, so
// passing is necessary, not sufficient; failing is certain. Other devices (the dry device of
// `bench train --dry`) are not checked.
func checkMemory(dev kernels.Device, cfg models.Config, specs []objectives.RoleSpec) error {
	var have int64
	if mi, ok := dev.(interface {
		MemInfo() (free, total uint64, err error)
	}); ok {
		if _, total, err := mi.MemInfo(); err == nil {
			have = int64(total)
		}
	} else if dev.Name() == "cpu" {
		have = HostMemory()
	}
	if have <= 0 {
		return nil
	}
	var need int64
	var parts []string
	for _, s := range specs {
		var P int64
		if s.Custom != nil {
			P = int64(s.Custom.Numel)
		} else {
			_, n := cfg.Params()
			P = int64(n)
		}
		copies := int64(1)
		if s.Trainable {
			copies = 4
		}
		need += 4 * P * copies
		parts = append(parts, fmt.Sprintf("%s %d×%d", s.Name, P, copies))
	}
	if need > have {
		return fmt.Errorf("trainer: the roles' weights, gradients and AdamW moments need %.1f GiB in fp32 (%s), more than the %s's %.1f GiB of memory",
			float64(need)/(1<<30), strings.Join(parts, ", "), dev.Name(), float64(have)/(1<<30))
	}
	return nil
}

// HostMemory is MemTotal of /proc/meminfo in bytes (0 where unknown).
func HostMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil && kb > 0 {
				return kb << 10
			}
		}
	}
	return 0
}
