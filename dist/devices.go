package dist

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Devices is a parsed device list (--devices, or device: in the job):
//
//	cpu            one CPU rank            cpu:N         N CPU ranks in this process (dist.Local)
//	cuda, cuda:N   GPU 0, GPU N            cuda:0,1,2,3  those GPUs (ranges too: cuda:0-3)
//	all, cuda:all  every GPU of the node   N (a number)  GPUs 0..N-1
type Devices struct {
	CPU      bool  // CPU ranks
	N        int   // CPU ranks
	All      bool  // every GPU the node has
	Ordinals []int // the GPUs listed (not All)
	Text     string
}

// ParseDevices parses a device list.
func ParseDevices(s string) (Devices, error) {
	d := Devices{Text: s}
	t := strings.ToLower(strings.TrimSpace(s))
	bad := func(why string) (Devices, error) {
		return d, fmt.Errorf("devices %q: %s (want cpu, cpu:N, cuda, cuda:N, cuda:0,1,2,3, all, or a number of GPUs)", s, why)
	}
	switch {
	case t == "cpu":
		d.CPU, d.N = true, 1
		return d, nil
	case strings.HasPrefix(t, "cpu:"):
		n, err := strconv.Atoi(t[4:])
		if err != nil || n < 1 {
			return bad(fmt.Sprintf("%q is not a number of CPU ranks ≥ 1", t[4:]))
		}
		d.CPU, d.N = true, n
		return d, nil
	case t == "all" || t == "cuda:all":
		d.All = true
		return d, nil
	case t == "cuda":
		d.Ordinals = []int{0}
		return d, nil
	case strings.HasPrefix(t, "cuda:"):
		for _, part := range strings.Split(t[5:], ",") {
			lo, hi, rng := strings.Cut(strings.TrimSpace(part), "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := a, error(nil)
			if rng {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil || a < 0 || b < a {
				return bad(fmt.Sprintf("%q is not a GPU ordinal or a range of them", part))
			}
			for g := a; g <= b; g++ {
				if slices.Contains(d.Ordinals, g) {
					return bad(fmt.Sprintf("GPU %d is listed twice", g))
				}
				d.Ordinals = append(d.Ordinals, g)
			}
		}
		return d, nil
	}
	if n, err := strconv.Atoi(t); err == nil {
		if n < 1 {
			return bad("a number of GPUs must be ≥ 1")
		}
		for g := 0; g < n; g++ {
			d.Ordinals = append(d.Ordinals, g)
		}
		return d, nil
	}
	return bad("unknown form")
}

// Ranks is the number of ranks the list names when known without looking at the machine (0 for
// all).
func (d Devices) Ranks() int {
	if d.CPU {
		return d.N
	}
	return len(d.Ordinals)
}

// Resolve gives the GPUs of the list on a node with count GPUs; a listed GPU that the node does
// not have is an error naming it.
func (d Devices) Resolve(count int) ([]int, error) {
	if d.CPU {
		return nil, fmt.Errorf("devices %q: CPU ranks have no GPUs", d.Text)
	}
	if count < 1 {
		return nil, fmt.Errorf("devices %q: this node has no GPU", d.Text)
	}
	if d.All {
		gs := make([]int, count)
		for i := range gs {
			gs[i] = i
		}
		return gs, nil
	}
	var missing []string
	for _, g := range d.Ordinals {
		if g >= count {
			missing = append(missing, strconv.Itoa(g))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("devices %q: GPU %s does not exist: this node has %d GPU(s), 0-%d (CUDA_VISIBLE_DEVICES renumbers them)", d.Text, strings.Join(missing, ", "), count, count-1)
	}
	return slices.Clone(d.Ordinals), nil
}

// Share is the part of a node's ranks that process localRank of localSize drives (launchers that
// start one process per GPU): an even split, in order.
func Share(ranks []int, localRank, localSize int) ([]int, error) {
	if localSize <= 1 {
		return ranks, nil
	}
	if len(ranks)%localSize != 0 {
		return nil, fmt.Errorf("%d devices do not split evenly over the %d processes of this node", len(ranks), localSize)
	}
	k := len(ranks) / localSize
	return ranks[localRank*k : (localRank+1)*k], nil
}
