package cuda

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestAttentionLaunchShapes runs without a GPU: every kernel attention.go launches is built by
// attention.cu (the tuning candidates live in scripts/attn_bench/attention_variants.cu, which must
// not be needed: attention.cu has no ATTN_VARIANTS block left), and each forward's launch shape
// (threads, query rows, keys per tile → shared memory) is the one its FWD instantiation compiles.
func TestAttentionLaunchShapes(t *testing.T) {
	src, err := os.ReadFile("attention.cu")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	if strings.Contains(body, "ATTN_VARIANTS") {
		t.Errorf("attention.cu has ATTN_VARIANTS blocks: tuning candidates go to scripts/attn_bench/attention_variants.cu")
	}
	type fwd struct{ hd, nw, wm, bc int }
	fwds := map[string]fwd{}
	for _, m := range regexp.MustCompile(`(?m)^FWD\((\d+), (\d+), (\d+), (\d+), \w+, (\w+)\)`).FindAllStringSubmatch(body, -1) {
		a := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
		fwds[m[5]] = fwd{a(1), a(2), a(3), a(4)}
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^(?:FWD|FWD3|BWD|BWD3)\([^)]*, (\w+)\)`).FindAllStringSubmatch(body, -1) {
		names[m[1]] = true
	}
	stages := map[string]int{} // FWD3 (the sm_90a forward): name → K/V stages
	for _, m := range regexp.MustCompile(`(?m)^FWD3\((\d+), \w+, \w+, (\w+)\)`).FindAllStringSubmatch(body, -1) {
		stages[m[2]], _ = strconv.Atoi(m[1])
	}
	for _, m := range regexp.MustCompile(`extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(`).FindAllStringSubmatch(body, -1) {
		names[m[1]] = true
	}
	if len(fwds) == 0 || len(names) == 0 {
		t.Fatalf("no kernels parsed from attention.cu")
	}
	need := []string{"attn_add_f32_into", attnBwdSm90Finis, attnBwdSm90Direct}
	for _, n := range attnBwdNames {
		need = append(need, n)
	}
	for _, n := range attnBwdSm90Names {
		need = append(need, n)
	}
	for _, n := range attnPrepNames {
		need = append(need, n)
	}
	for _, n := range need {
		if !names[n] {
			t.Errorf("attention.go launches %s, which attention.cu does not build", n)
		}
	}
	d := &Device{sms: 132}
	for _, c := range []struct{ B, Nq, H, hd, ct int }{
		{1, 32760, 12, 128, 0}, {1, 4680, 12, 128, 1560}, {1, 32760, 12, 128, 1560}, {2, 300, 3, 64, 0}, {1, 100, 2, 64, 50},
	} {
		for _, dt := range []kernels.DType{kernels.BF16, kernels.F32} {
			cfg, ok := d.attnFwdPick(c.B, c.Nq, c.H, c.hd, dt, c.ct)
			if !ok {
				t.Errorf("%+v %v: no forward kernel", c, dt)
				continue
			}
			f, built := fwds[cfg.name]
			if !built {
				t.Errorf("%+v %v: attention.go picks %s, which attention.cu does not build", c, dt, cfg.name)
				continue
			}
			if f.hd != c.hd || cfg.threads != 32*f.nw || cfg.rows != 16*f.nw*f.wm || cfg.keys != f.bc {
				t.Errorf("%s: launched with %d threads, %d rows, %d keys; built as hd %d, %d warps × %d m-tiles, %d keys",
					cfg.name, cfg.threads, cfg.rows, cfg.keys, f.hd, f.nw, f.wm, f.bc)
			}
		}
	}
	// Hopper: hd 128 bf16 goes to the FA3-style kernel (384 threads, 128 rows), the rest as before.
	h := &Device{sms: 132, cc: 90, smem: 227 << 10}
	for _, ct := range []int{0, 1560} {
		cfg, ok := h.attnFwdPick(1, 32760, 12, 128, kernels.BF16, ct)
		ns, built := stages[cfg.name]
		if !ok || !built || cfg.threads != 384 || cfg.rows != 128 || cfg.smem(128) != 1024+32768*(1+2*ns)+8*(1+4*ns) {
			t.Errorf("sm_90, ct %d: picked %+v (built: %v, %d stages), want the FWD3 kernel with its shared memory", ct, cfg, built, ns)
		}
	}
	// Hopper backward: hd 128 with bf16 storage (fp32 or bf16 gradients) goes to the sm_90a kernel,
	// whose shared memory is the one attention.cu lays out (fa3b: 1 KB slack + K, V + 2 stages of Q,
	// dO + 2 dSᵀ + 2 dQ stagings of DQP bytes per query + lse/D + 5 mbarriers).
	m := regexp.MustCompile(`constexpr int BRQ = (\d+);`).FindStringSubmatch(body)
	if m == nil || m[1] != strconv.Itoa(attnBwdSm90Tile) {
		t.Errorf("attention.cu's sm_90a backward query tile %v, attention.go's %d", m, attnBwdSm90Tile)
	}
	p := regexp.MustCompile(`constexpr int DQP = (\d+);`).FindStringSubmatch(body)
	if p == nil {
		t.Fatalf("attention.cu has no DQP (the sm_90a backward's dQ staging pitch)")
	}
	dqp, _ := strconv.Atoi(p[1])
	if want := 1024 + 2*128*128*2 + 6*attnBwdSm90Tile*128*2 + 2*attnBwdSm90Tile*dqp + 2*2*attnBwdSm90Tile*4 + 8*5; attnBwdSm90Smem != want {
		t.Errorf("attnBwdSm90Smem %d, want %d", attnBwdSm90Smem, want)
	}
	for _, c := range []struct {
		hd     int
		dt, g  kernels.DType
		dev    *Device
		want90 bool
	}{{128, kernels.BF16, kernels.F32, h, true}, {128, kernels.BF16, kernels.BF16, h, true}, {128, kernels.F32, kernels.F32, h, false},
		{64, kernels.BF16, kernels.F32, h, false}, {128, kernels.BF16, kernels.F32, d, false}} {
		if name, ok := c.dev.attnBwdSm90(c.hd, c.dt, c.g); ok != (c.want90 && !attnBwdForceFA2) || ok && !names[name] {
			t.Errorf("backward hd %d %v grads %v cc %d: sm_90a kernel %q %v, want %v", c.hd, c.dt, c.g, c.dev.cc, name, ok, c.want90)
		}
	}
	if cfg, _ := h.attnFwdPick(1, 4680, 12, 128, kernels.F32, 0); cfg.name != "attn_fwd_hd128_f32" {
		t.Errorf("sm_90 fp32 storage: picked %s", cfg.name)
	}
	if cfg, _ := h.attnFwdPick(1, 4680, 24, 64, kernels.BF16, 0); cfg.name != "attn_fwd_hd64_bf16" {
		t.Errorf("sm_90 hd 64: picked %s", cfg.name)
	}
	if cfg, _ := d.attnFwdPick(1, 32760, 12, 128, kernels.BF16, 0); cfg.rows != 256 {
		t.Errorf("N=32760 unmasked hd 128 bf16: picked %s, want the 256-row tiling", cfg.name)
	}
	if cfg, _ := d.attnFwdPick(1, 4680, 12, 128, kernels.BF16, 1560); cfg.rows != 128 {
		t.Errorf("N=4680 block-causal hd 128 bf16: picked %s, want the 128-row tiling", cfg.name)
	}
}
