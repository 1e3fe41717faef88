package eval

import (
	"fmt"
	"strings"

	"github.com/fewstep/fewstep/data"
)

// Set is a held-out split in memory: raw latents (as stored, not normalized), captions and text
// embeddings zero-padded to L tokens.
type Set struct {
	N, C, F, H, W int
	L, TextDim    int
	Latents       []float32 // [N, C, F, H, W]
	Text          []float32 // [N, L, TextDim]
	Captions      []string
	IDs           []string
	Tokens        []int // stored (unpadded) text tokens per row
	// Null is the unconditional (CFG) embedding [L, TextDim]. LoadSet sets the toy encoder's empty
	// prompt (all zeros, what the loader substitutes for a dropped caption); a real dataset's caller
	// puts its encoder's empty / negative prompt here.
	Null []float32
}

// LoadSet reads a dataset file or folder (vae_latent, text_embedding, caption) with embeddings
// padded to textLen tokens. Every row must have the latent shape of row 0.
func LoadSet(path string, textLen int) (*Set, error) {
	ds, err := data.Open(path)
	if err != nil {
		return nil, err
	}
	defer ds.Close()
	s := &Set{N: ds.NumRows(), L: textLen}
	defer func() {
		if s.TextDim > 0 {
			s.Null = make([]float32, textLen*s.TextDim)
		}
	}()
	if s.N == 0 {
		return nil, fmt.Errorf("eval: %s: no rows", path)
	}
	for i := 0; i < s.N; i++ {
		row, err := ds.Row(i)
		if err != nil {
			return nil, err
		}
		lat, err := row.Tensor(data.Latent)
		if err != nil {
			return nil, err
		}
		if len(lat.Shape) != 4 {
			return nil, fmt.Errorf("eval: %s: row %d (%s), column %s: shape %v, want [C, F, H, W]", row.File, row.Index, row.ID, data.BytesCol(data.Latent), lat.Shape)
		}
		if i == 0 {
			s.C, s.F, s.H, s.W = lat.Shape[0], lat.Shape[1], lat.Shape[2], lat.Shape[3]
			s.Latents = make([]float32, 0, s.N*lat.Numel())
		} else if lat.Shape[0] != s.C || lat.Shape[1] != s.F || lat.Shape[2] != s.H || lat.Shape[3] != s.W {
			return nil, fmt.Errorf("eval: %s: row %d (%s), column %s: shape %v, row 0 has [%d %d %d %d]", row.File, row.Index, row.ID, data.BytesCol(data.Latent), lat.Shape, s.C, s.F, s.H, s.W)
		}
		n := len(s.Latents)
		s.Latents = s.Latents[:n+lat.Numel()]
		lat.Decode(s.Latents[n:], nil, nil)

		emb, err := row.Tensor(data.TextEmb)
		if err != nil {
			return nil, err
		}
		if len(emb.Shape) != 2 || emb.Shape[0] > textLen {
			return nil, fmt.Errorf("eval: %s: row %d (%s), column %s: shape %v, want [≤ text_len %d, text_dim]", row.File, row.Index, row.ID, data.BytesCol(data.TextEmb), emb.Shape, textLen)
		}
		if i == 0 {
			s.TextDim = emb.Shape[1]
			s.Text = make([]float32, s.N*textLen*s.TextDim)
		} else if emb.Shape[1] != s.TextDim {
			return nil, fmt.Errorf("eval: %s: row %d (%s), column %s: text_dim %d, row 0 has %d", row.File, row.Index, row.ID, data.BytesCol(data.TextEmb), emb.Shape[1], s.TextDim)
		}
		emb.Decode(s.Text[i*textLen*s.TextDim:i*textLen*s.TextDim+emb.Numel()], nil, nil)
		s.Tokens = append(s.Tokens, emb.Shape[0])
		s.Captions = append(s.Captions, strings.Clone(row.Caption)) // the row aliases the mapped file
		s.IDs = append(s.IDs, strings.Clone(row.ID))
	}
	return s, nil
}

// Slice is rows lo..hi−1 (sharing memory).
func (s *Set) Slice(lo, hi int) *Set {
	per, lt := s.C*s.F*s.H*s.W, s.L*s.TextDim
	o := *s
	o.N = hi - lo
	o.Latents = s.Latents[lo*per : hi*per]
	o.Text = s.Text[lo*lt : hi*lt]
	o.Captions = s.Captions[lo:hi]
	o.IDs = s.IDs[lo:hi]
	if s.Tokens != nil {
		o.Tokens = s.Tokens[lo:hi]
	}
	return &o
}

// Videos decodes the set's latents to pixels (synthetic latent space only).
func (s *Set) Videos() (Videos, error) {
	return DecodeLatents(s.Latents, s.N, s.C, s.F, s.H, s.W)
}
