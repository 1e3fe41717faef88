package sampler

import (
	"image/gif"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// The files decode back with the right size, frame count and (for the PNG) exact colours.
func TestPreviewsRoundTrip(t *testing.T) {
	const F, H, W, s = 3, 4, 5, 2
	pix := make([]float32, 3*F*H*W)
	for i := range pix {
		pix[i] = float32(i%7) / 6
	}
	dir := t.TempDir()
	g, p := filepath.Join(dir, "a.gif"), filepath.Join(dir, "a.png")
	if err := WriteGIF(g, pix, F, H, W, s, 250); err != nil {
		t.Fatal(err)
	}
	if err := WritePNGStrip(p, pix, F, H, W, s); err != nil {
		t.Fatal(err)
	}
	fg, _ := os.Open(g)
	defer fg.Close()
	an, err := gif.DecodeAll(fg)
	if err != nil || len(an.Image) != F || an.Image[0].Bounds().Dx() != W*s || an.Delay[0] != 25 {
		t.Fatalf("gif: err %v, %d frames", err, len(an.Image))
	}
	fp, _ := os.Open(p)
	defer fp.Close()
	img, err := png.Decode(fp)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != F*(W*s+1)-1 || b.Dy() != H*s {
		t.Fatalf("png strip %v", b)
	}
	// frame 2, pixel (y=3, x=4), scaled block's bottom-right corner
	f, y, x := 2, 3, 4
	r, gg, b, _ := img.At(f*(W*s+1)+x*s+1, y*s+1).RGBA()
	for ch, got := range []uint32{r >> 8, gg >> 8, b >> 8} {
		want := to8(pix[(ch*F+f)*H*W+y*W+x])
		if uint8(got) != want {
			t.Fatalf("channel %d: %d, want %d", ch, got, want)
		}
	}
	if err := WriteGIF(g, pix[:10], F, H, W, s, 100); err == nil {
		t.Fatal("short pixels: no error")
	}
}
