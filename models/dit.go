package models

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/fewstep/fewstep/kernels"
)

// DiT is the Wan2.1 T2V diffusion transformer: its config, its parameter table, and one buffer of
// weights (and one of gradients) carved by that table.
type DiT struct {
	Cfg   Config
	Dev   kernels.Device
	Table []Param
	W     *kernels.Tensor // [P] every parameter in one buffer (fp32 master on the CPU)
	G     *kernels.Tensor // [P] gradients, same layout; nil for a frozen network

	// GradDone, when set on a DiT with gradients that is not sharded, serves the next Backward:
	// it is called with each range [lo, hi) of G (table offsets) as soon as that backward has
	// finished writing it (block l's parameters after block l's backward, top block first, then
	// the blocks above a BackwardHidden's layer, the embeddings and the head, so that every range
	// is called once), and Backward clears it at its end. The trainer launches the gradient
	// all-reduce of the last backward of a step bucket by bucket this way (trainer/dist.go).
	GradDone func(lo, hi int)

	index     map[string]int
	w, g      weights // views of W and G by layer (g's views are nil when G is nil)
	fs        *fsdp   // blocks sharded over ranks (fsdp.go); nil: W holds every parameter
	backwards int     // Backward calls so far (Backwards)
}

// Backwards is the number of Backward (and BackwardHidden) calls on m so far.
func (m *DiT) Backwards() int { return m.backwards }

// blockRange is block l's range of the table [lo, hi): the blocks are laid out one after another
// with the same stride.
func (m *DiT) blockRange(l int) (lo, hi int) {
	b0 := m.Table[m.index["blocks.0.self_attn.q.weight"]].Offset
	head := m.Table[m.index["head.head.weight"]].Offset
	S := (head - b0) / m.Cfg.Layers
	return b0 + l*S, b0 + (l+1)*S
}

// linear is the weight [out, in] and bias [out] of one Linear layer.
type linear struct{ W, B *kernels.Tensor }

// attn is one attention module's parameters.
type attn struct {
	Q, K, V, O   linear
	NormQ, NormK *kernels.Tensor // [D]
}

type block struct {
	Self, Cross attn
	Norm3W      *kernels.Tensor // [D]
	Norm3B      *kernels.Tensor // [D]
	FFN0, FFN2  linear
	Modulation  *kernels.Tensor // [6·D]
	// self-attention's {Q, K, V} and cross-attention's {K, V} weights and biases: one Linear apart
	// in the table (Config.Params), so each set is one strided-batched GEMM (kernels.LinearBatched)
	SelfQKVW, SelfQKVB, CrossKVW, CrossKVB []*kernels.Tensor
}

// weights are views of a parameter buffer shaped for the ops.
type weights struct {
	Patch          linear // W viewed [D, C·4]
	Text0, Text2   linear
	Time0, Time2   linear
	TimeProj       linear
	Blocks         []block
	Head           linear
	HeadModulation *kernels.Tensor // [2·D]
}

// New allocates a model (zero weights; call Init or Load) on dev, with a gradient buffer if grads.
func New(dev kernels.Device, cfg Config, grads bool) *DiT {
	return newDiT(dev, cfg, grads, kernels.F32)
}

// NewFrozen is New without gradients and with the weights stored as dt (bf16 for a frozen teacher
// on a GPU whose GEMMs read bf16 weights anyway; Load, Init and Save convert). Its norm, modulation
// and bias parameters are then dt too; every op reads a parameter in its storage dtype.
func NewFrozen(dev kernels.Device, cfg Config, dt kernels.DType) *DiT {
	return newDiT(dev, cfg, false, dt)
}

// NewWithWeights is New with the weights stored as dt: under train.shard optimizer on a GPU a
// trainable network computes from bf16 weights while the fp32 master weights live in slices on the
// ranks (trainer/dist.go). Every op reads a parameter in its storage dtype; G is fp32.
func NewWithWeights(dev kernels.Device, cfg Config, grads bool, dt kernels.DType) *DiT {
	return newDiT(dev, cfg, grads, dt)
}

func newDiT(dev kernels.Device, cfg Config, grads bool, wdt kernels.DType) *DiT {
	m, P := newShell(dev, cfg)
	m.W = dev.Alloc(wdt, P)
	m.w = m.carve(m.W)
	if grads {
		m.G = dev.Alloc(kernels.F32, P)
		m.g = m.carve(m.G)
	} else {
		m.g = weights{Blocks: make([]block, cfg.Layers)} // every gradient view nil: "not wanted"
	}
	return m
}

// newShell is a DiT of cfg (validated; panics on a bad config, as New does) with its parameter table
// and name index but no buffers; P is the parameter count.
func newShell(dev kernels.Device, cfg Config) (*DiT, int) {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	table, P := cfg.Params()
	m := &DiT{Cfg: cfg, Dev: dev, Table: table, index: make(map[string]int, len(table))}
	for i, p := range table {
		m.index[p.Name] = i
	}
	return m, P
}

func (m *DiT) view(buf *kernels.Tensor, name string, shape ...int) *kernels.Tensor {
	i, ok := m.index[name]
	if !ok {
		panic("models: no parameter " + name)
	}
	p := m.Table[i]
	if shape == nil {
		shape = p.Shape
	}
	return buf.View(p.Offset, shape...)
}

func (m *DiT) carve(buf *kernels.Tensor) weights {
	return m.carveWith(func(name string, shape []int) *kernels.Tensor { return m.view(buf, name, shape...) })
}

// carveWith makes the layer views, each parameter's from view(name, shape) (shape nil: the table's).
func (m *DiT) carveWith(view func(name string, shape []int) *kernels.Tensor) weights {
	c := m.Cfg
	D := c.Dim
	v := func(name string, shape ...int) *kernels.Tensor { return view(name, shape) }
	lin := func(name string, out, in int) linear {
		return linear{v(name+".weight", out, in), v(name+".bias", out)}
	}
	var w weights
	w.Patch = linear{v("patch_embedding.weight", D, 4*c.InDim), v("patch_embedding.bias")}
	w.Text0 = lin("text_embedding.0", D, c.TextDim)
	w.Text2 = lin("text_embedding.2", D, D)
	w.Time0 = lin("time_embedding.0", D, c.FreqDim)
	w.Time2 = lin("time_embedding.2", D, D)
	w.TimeProj = lin("time_projection.1", 6*D, D)
	for i := 0; i < c.Layers; i++ {
		b := fmt.Sprintf("blocks.%d.", i)
		at := func(a string) attn {
			return attn{Q: lin(b+a+".q", D, D), K: lin(b+a+".k", D, D), V: lin(b+a+".v", D, D), O: lin(b+a+".o", D, D),
				NormQ: v(b + a + ".norm_q.weight"), NormK: v(b + a + ".norm_k.weight")}
		}
		bl := block{Self: at("self_attn"), Cross: at("cross_attn"),
			Norm3W: v(b + "norm3.weight"), Norm3B: v(b + "norm3.bias"),
			FFN0: lin(b+"ffn.0", c.FFNDim, D), FFN2: lin(b+"ffn.2", D, c.FFNDim),
			Modulation: v(b+"modulation", 6*D)}
		bl.SelfQKVW = []*kernels.Tensor{bl.Self.Q.W, bl.Self.K.W, bl.Self.V.W}
		bl.SelfQKVB = []*kernels.Tensor{bl.Self.Q.B, bl.Self.K.B, bl.Self.V.B}
		bl.CrossKVW = []*kernels.Tensor{bl.Cross.K.W, bl.Cross.V.W}
		bl.CrossKVB = []*kernels.Tensor{bl.Cross.K.B, bl.Cross.V.B}
		w.Blocks = append(w.Blocks, bl)
	}
	w.Head = lin("head.head", 4*c.OutDim, D)
	w.HeadModulation = v("head.modulation", 2*D)
	return w
}

// Param is the view of W holding parameter name (Wan2.1 key), in the key's own shape.
// It panics on an unknown name (a programming error).
func (m *DiT) Param(name string) *kernels.Tensor { m.whole("Param"); return m.view(m.W, name) }

// whole panics on a sharded DiT: op needs the table layout (use Full / SetFull).
func (m *DiT) whole(op string) {
	if m.fs != nil {
		panic("models: " + op + " of a sharded DiT (its W holds the rank's slices; use Full or SetFull)")
	}
}

// Grad is the view of G holding the gradient of parameter name; nil for a frozen network.
func (m *DiT) Grad(name string) *kernels.Tensor {
	if m.G == nil {
		return nil
	}
	m.whole("Grad")
	return m.view(m.G, name)
}

// HasParam reports whether name is a key of the table.
func (m *DiT) HasParam(name string) bool { _, ok := m.index[name]; return ok }

// Init sets Wan's initialization (WanModel.init_weights), seeded: every Linear xavier-uniform with
// zero bias; the patch embedding xavier-uniform on its [D, C·4] flattening with PyTorch's default
// Conv3d bias U(±1/√(C·4)); the text and time MLP weights N(0, 0.02); modulations randn/√D; norm
// weights 1 and biases 0; the output layer head.head's weight 0.
func (m *DiT) Init(seed int64) {
	rng := rand.New(rand.NewSource(seed))
	host := make([]float32, m.fullNumel())
	D := float64(m.Cfg.Dim)
	for _, p := range m.Table {
		v := host[p.Offset : p.Offset+numel(p.Shape)]
		name := p.Name
		switch {
		case name == "patch_embedding.bias":
			bound := 1 / math.Sqrt(float64(4*m.Cfg.InDim))
			for i := range v {
				v[i] = float32((2*rng.Float64() - 1) * bound)
			}
		case strings.HasSuffix(name, ".bias"):
			// zero (Linear biases and norm3.bias)
		case strings.HasSuffix(name, "norm_q.weight"), strings.HasSuffix(name, "norm_k.weight"), strings.HasSuffix(name, "norm3.weight"):
			for i := range v {
				v[i] = 1
			}
		case strings.HasSuffix(name, "modulation"):
			for i := range v {
				v[i] = float32(rng.NormFloat64() / math.Sqrt(D))
			}
		case name == "head.head.weight":
			// zero: the network starts by predicting 0
		case strings.HasPrefix(name, "text_embedding.") || strings.HasPrefix(name, "time_embedding."):
			for i := range v {
				v[i] = float32(0.02 * rng.NormFloat64())
			}
		default: // a Linear weight [out, in] or the patch embedding [D, C, 1, 2, 2]
			out := p.Shape[0]
			in := numel(p.Shape) / out
			bound := math.Sqrt(6 / float64(in+out))
			for i := range v {
				v[i] = float32((2*rng.Float64() - 1) * bound)
			}
		}
	}
	m.SetFull(host)
}

// InitRandom fills every parameter (head and norms included) with N(0, std) values, seeded: the
// non-degenerate weights tests use so that every gradient is non-trivial.
func (m *DiT) InitRandom(seed int64, std float32) {
	rng := rand.New(rand.NewSource(seed))
	host := make([]float32, m.fullNumel())
	for _, p := range m.Table {
		v := host[p.Offset : p.Offset+numel(p.Shape)]
		for i := range v {
			v[i] = std * float32(rng.NormFloat64())
		}
	}
	m.SetFull(host)
}

// ZeroGrad zeroes G.
func (m *DiT) ZeroGrad() {
	if m.G != nil {
		m.SettleGrads() // a sharded DiT's scatters in flight land first (an error stays in Err)
		m.Dev.Zero(m.G)
	}
}

// Tensors returns the parameters (buf = m.W) or gradients (buf = m.G) as host tensors in table order,
// named prefix+key.
func (m *DiT) Tensors(buf *kernels.Tensor, prefix string) []NamedTensor {
	m.whole("Tensors")
	host := make([]float32, buf.Numel())
	m.Dev.ToHost(host, buf)
	return m.NamedTensors(host, prefix)
}

// NamedTensors cuts whole weights in table layout (host, e.g. from Full) into named tensors.
func (m *DiT) NamedTensors(host []float32, prefix string) []NamedTensor {
	ts := make([]NamedTensor, len(m.Table))
	for i, p := range m.Table {
		ts[i] = NamedTensor{Name: prefix + p.Name, Shape: p.Shape, Data: host[p.Offset : p.Offset+numel(p.Shape) : p.Offset+numel(p.Shape)]}
	}
	return ts
}

// Save writes the weights as safetensors in Wan2.1's key layout, in dtype dt, atomically.
func (m *DiT) Save(path string, dt kernels.DType) error {
	if m.fs != nil {
		return fmt.Errorf("models: save %s: a sharded DiT is saved from its gathered weights (Full, NamedTensors)", path)
	}
	return WriteSafetensors(path, m.Tensors(m.W, ""), dt, map[string]string{"format": "pt"})
}

// Load reads weights in Wan2.1's key layout or diffusers' (detected from the keys, layout.go), F32,
// BF16 or F16, into W. path is a safetensors file,
// a sharded checkpoint's *.safetensors.index.json, or a folder holding either (Wan2.1-14B ships in
// shards). Strict: every key of the table must be present with its shape and no other key may be;
// the error lists every missing, unexpected and mis-shaped key, and a NaN or Inf weight is an error
// naming its key. W is left unchanged on error.
func (m *DiT) Load(path string) error {
	host, err := m.LoadHost(path)
	if err != nil {
		return err
	}
	m.SetFull(host)
	return nil
}

// LoadHost reads the weights of a checkpoint (as Load) into the host in the table's layout, fp32,
// whole (P values).
func (m *DiT) LoadHost(path string) ([]float32, error) {
	files, err := openCheckpoint(path)
	defer func() {
		for _, f := range files {
			f.close()
		}
	}()
	if err != nil {
		return nil, err
	}
	type loc struct {
		f *stFile
		e stEntry
	}
	where := map[string]loc{}
	for _, f := range files {
		for _, e := range f.entries {
			if prev, dup := where[e.Name]; dup {
				return nil, fmt.Errorf("models: load %s: key %s is in both %s and %s", path, e.Name, prev.f.path, f.path)
			}
			where[e.Name] = loc{f, e}
		}
	}
	keys := make([]string, 0, len(where))
	for k := range where {
		keys = append(keys, k)
	}
	if DetectLayout(keys) == LayoutDiffusers { // layout.go: the same tensors under diffusers' names
		wan := make(map[string]loc, len(where))
		for k, l := range where {
			name := WanKey(k)
			if name == "" {
				name = k // not one of the model's: reported as unexpected under its own name
			}
			wan[name] = l
		}
		where = wan
	}
	var missing, unexpected, misshaped []string
	for _, p := range m.Table {
		l, ok := where[p.Name]
		if !ok {
			missing = append(missing, p.Name)
		} else if !slices.Equal(l.e.Shape, p.Shape) {
			misshaped = append(misshaped, fmt.Sprintf("%s %v (want %v)", p.Name, l.e.Shape, p.Shape))
		}
	}
	for name := range where {
		if _, ok := m.index[name]; !ok {
			unexpected = append(unexpected, name)
		}
	}
	if len(missing)+len(unexpected)+len(misshaped) > 0 {
		msg := fmt.Sprintf("models: load %s: checkpoint does not match the model (dim %d, %d layers, text_dim %d, in/out %d/%d)",
			path, m.Cfg.Dim, m.Cfg.Layers, m.Cfg.TextDim, m.Cfg.InDim, m.Cfg.OutDim)
		if len(missing) > 0 {
			msg += fmt.Sprintf("; %d missing keys: %s", len(missing), describeKeys(missing))
		}
		if len(unexpected) > 0 {
			msg += fmt.Sprintf("; %d unexpected keys: %s", len(unexpected), describeKeys(unexpected))
		}
		if len(misshaped) > 0 {
			msg += fmt.Sprintf("; %d mis-shaped keys: %s", len(misshaped), describeKeys(misshaped))
		}
		return nil, fmt.Errorf("%s", msg)
	}
	host := make([]float32, m.fullNumel())
	for _, p := range m.Table {
		l := where[p.Name]
		v := host[p.Offset : p.Offset+numel(p.Shape)]
		if err := l.f.read(l.e, v); err != nil {
			return nil, err
		}
		if i := NonFinite(v); i >= 0 {
			return nil, fmt.Errorf("models: load %s: key %s holds %g at flat index %d: the weights are not finite (a diverged run?)", l.f.path, p.Name, v[i], i)
		}
	}
	return host, nil
}

// openCheckpoint opens a safetensors file, the shards named by an index.json, or what a folder holds
// (its one index.json, else its *.safetensors files).
func openCheckpoint(path string) ([]*stFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("models: load %s: %w", path, err)
	}
	var names []string
	switch {
	case fi.IsDir():
		idx, _ := filepath.Glob(filepath.Join(path, "*.safetensors.index.json"))
		if len(idx) > 1 {
			return nil, fmt.Errorf("models: load %s: several index files %v: name one", path, idx)
		}
		if len(idx) == 1 {
			return openCheckpoint(idx[0])
		}
		names, _ = filepath.Glob(filepath.Join(path, "*.safetensors"))
		if len(names) == 0 {
			return nil, fmt.Errorf("models: load %s: no *.safetensors or *.safetensors.index.json in the folder", path)
		}
	case strings.HasSuffix(path, ".json"):
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("models: load %s: %w", path, err)
		}
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil || len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("models: load %s: not a safetensors index (want {\"weight_map\": {key: file}}): %v", path, err)
		}
		seen := map[string]bool{}
		for _, f := range idx.WeightMap {
			if !seen[f] {
				seen[f] = true
				names = append(names, filepath.Join(filepath.Dir(path), f))
			}
		}
		sort.Strings(names)
	default:
		names = []string{path}
	}
	var files []*stFile
	for _, n := range names {
		f, err := openSafetensors(n)
		if err != nil {
			return files, err
		}
		files = append(files, f)
	}
	return files, nil
}
