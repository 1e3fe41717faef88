package sampler

import (
	"fmt"
	"image"
	"image/color"
	"image/color/palette"
	"image/draw"
	"image/gif"
	"image/png"
	"os"
)

// Previews of decoded videos: pix [3, F, H, W] in [0, 1] (RGB planes), each pixel blown up to a
// scale×scale block so that 32×32 toy videos are visible.

// frameImage is frame f of pix as an RGBA image, upscaled.
func frameImage(pix []float32, f, F, H, W, scale int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, W*scale, H*scale))
	plane := H * W
	for y := 0; y < H; y++ {
		for x := 0; x < W; x++ {
			var c [3]uint8
			for ch := 0; ch < 3; ch++ {
				c[ch] = to8(pix[(ch*F+f)*plane+y*W+x])
			}
			draw.Draw(img, image.Rect(x*scale, y*scale, (x+1)*scale, (y+1)*scale),
				&image.Uniform{color.RGBA{c[0], c[1], c[2], 255}}, image.Point{}, draw.Src)
		}
	}
	return img
}

func to8(v float32) uint8 {
	switch {
	case !(v > 0): // also NaN
		return 0
	case v >= 1:
		return 255
	}
	return uint8(v*255 + 0.5)
}

func checkPix(pix []float32, F, H, W, scale int) error {
	if F < 1 || H < 1 || W < 1 || scale < 1 || len(pix) != 3*F*H*W {
		return fmt.Errorf("preview: %d values for [3, F=%d, H=%d, W=%d] (scale %d)", len(pix), F, H, W, scale)
	}
	// The PNG strip is the larger image: F frames of (H·scale)×(W·scale) RGBA. GIF allows 65535
	// pixels a side.
	if scale > 1<<10 {
		return fmt.Errorf("preview: scale %d, the limit is 1024", scale)
	}
	side, rgba := int64(F)*int64(W*scale+1), 4*int64(F)*int64(W*scale+1)*int64(H*scale)
	if rgba > 1<<30 || side > 65535 || int64(H*scale) > 65535 {
		return fmt.Errorf("preview: %d frames of %d×%d at scale %d make a %d×%d image (%.1f MiB), more than the limit of 65535 pixels a side and 1 GiB",
			F, H, W, scale, side, H*scale, float64(rgba)/(1<<20))
	}
	return nil
}

// WriteGIF writes an animated GIF (looping, delayMs per frame) of pix [3,F,H,W].
func WriteGIF(path string, pix []float32, F, H, W, scale, delayMs int) error {
	if err := checkPix(pix, F, H, W, scale); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	anim := &gif.GIF{}
	for f := 0; f < F; f++ {
		src := frameImage(pix, f, F, H, W, scale)
		pal := image.NewPaletted(src.Bounds(), palette.Plan9)
		draw.Draw(pal, pal.Rect, src, image.Point{}, draw.Src) // nearest palette colour, no dithering
		anim.Image = append(anim.Image, pal)
		anim.Delay = append(anim.Delay, max(delayMs/10, 1))
	}
	return writeFile(path, func(fh *os.File) error { return gif.EncodeAll(fh, anim) })
}

// WritePNGStrip writes the frames of pix [3,F,H,W] side by side, separated by a 1-pixel grey line.
func WritePNGStrip(path string, pix []float32, F, H, W, scale int) error {
	if err := checkPix(pix, F, H, W, scale); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fw := W*scale + 1
	strip := image.NewRGBA(image.Rect(0, 0, F*fw-1, H*scale))
	draw.Draw(strip, strip.Rect, &image.Uniform{color.RGBA{128, 128, 128, 255}}, image.Point{}, draw.Src)
	for f := 0; f < F; f++ {
		img := frameImage(pix, f, F, H, W, scale)
		draw.Draw(strip, img.Rect.Add(image.Pt(f*fw, 0)), img, image.Point{}, draw.Src)
	}
	return writeFile(path, func(fh *os.File) error { return png.Encode(fh, strip) })
}

func writeFile(path string, fill func(*os.File) error) error {
	fh, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fill(fh); err != nil {
		fh.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return fh.Close()
}
