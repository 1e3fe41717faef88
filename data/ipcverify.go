package data

// A bounds check of an Arrow IPC file's flatbuffer metadata before arrow-go reads it. arrow-go
// sizes slices from vector lengths it reads from the file; a corrupt length makes it allocate
// terabytes (a fatal out-of-memory, which recover cannot catch). This walk checks that every vector
// the reader will size from — the schema's fields (recursively), their metadata, union type ids,
// the footer's blocks, each record batch message's nodes and buffers — fits inside its buffer, and
// that every block lies inside the file. Out-of-range reads during the walk panic and are recovered.

import (
	"encoding/binary"
	"fmt"

	flatbuffers "github.com/google/flatbuffers/go"
)

type fbCheck struct {
	buf []byte
	err error
}

func slot(i int) flatbuffers.VOffsetT { return flatbuffers.VOffsetT(4 + 2*i) }

// table returns the sub-table at a slot (nil if absent), after checking its position.
func (c *fbCheck) table(t *flatbuffers.Table, i int) *flatbuffers.Table {
	o := flatbuffers.UOffsetT(t.Offset(slot(i)))
	if o == 0 {
		return nil
	}
	pos := t.Indirect(o + t.Pos)
	c.pos(pos, 4)
	return &flatbuffers.Table{Bytes: t.Bytes, Pos: pos}
}

func (c *fbCheck) pos(p flatbuffers.UOffsetT, n int) {
	if c.err == nil && (int(p) < 0 || int(p)+n > len(c.buf)) {
		c.err = fmt.Errorf("metadata offset %d out of range (%d bytes)", p, len(c.buf))
	}
}

// vec checks the vector at a slot (elements of elem bytes) and returns its length and start.
func (c *fbCheck) vec(t *flatbuffers.Table, i, elem int) (int, flatbuffers.UOffsetT) {
	o := flatbuffers.UOffsetT(t.Offset(slot(i)))
	if o == 0 || c.err != nil {
		return 0, 0
	}
	lenPos := o + t.Pos + flatbuffers.GetUOffsetT(t.Bytes[o+t.Pos:])
	c.pos(lenPos, 4)
	if c.err != nil {
		return 0, 0
	}
	n := t.VectorLen(o)
	start := t.Vector(o)
	if n < 0 || int(start)+n*elem > len(c.buf) {
		c.err = fmt.Errorf("metadata vector of %d elements at %d overruns its %d bytes", n, start, len(c.buf))
		return 0, 0
	}
	return n, start
}

// tables visits the tables of a vector of tables.
func (c *fbCheck) tables(t *flatbuffers.Table, i int, visit func(*flatbuffers.Table)) {
	n, start := c.vec(t, i, 4)
	for k := 0; k < n && c.err == nil; k++ {
		p := start + flatbuffers.UOffsetT(4*k)
		pos := p + flatbuffers.GetUOffsetT(t.Bytes[p:])
		c.pos(pos, 4)
		if c.err == nil {
			visit(&flatbuffers.Table{Bytes: t.Bytes, Pos: pos})
		}
	}
}

func (c *fbCheck) keyValues(t *flatbuffers.Table, i int) {
	c.tables(t, i, func(kv *flatbuffers.Table) {
		c.vec(kv, 0, 1)
		c.vec(kv, 1, 1)
	})
}

const arrowUnionType = 14

// field checks a Field table: name(0) nullable(1) type_type(2) type(3) dictionary(4) children(5)
// custom_metadata(6).
func (c *fbCheck) field(f *flatbuffers.Table, depth int) {
	if depth > 64 {
		c.err = fmt.Errorf("schema nested deeper than 64")
		return
	}
	c.vec(f, 0, 1)
	if f.GetByteSlot(slot(2), 0) == arrowUnionType {
		if u := c.table(f, 3); u != nil && c.err == nil {
			c.vec(u, 1, 4) // typeIds
		}
	}
	c.tables(f, 5, func(ch *flatbuffers.Table) { c.field(ch, depth+1) })
	c.keyValues(f, 6)
}

// verifyIPCFile checks the footer, the schema and every record batch message of an IPC file.
func verifyIPCFile(data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("corrupt metadata: %v", r)
		}
	}()
	const magic = "ARROW1"
	if len(data) < 2*len(magic)+2+4 || string(data[:len(magic)]) != magic || string(data[len(data)-len(magic):]) != magic {
		return fmt.Errorf("not an Arrow IPC file (magic bytes missing; truncated?)")
	}
	flen := int(int32(binary.LittleEndian.Uint32(data[len(data)-len(magic)-4:])))
	end := len(data) - len(magic) - 4
	if flen <= 0 || flen > end-8 {
		return fmt.Errorf("footer length %d out of range (truncated?)", flen)
	}
	buf := data[end-flen : end]
	c := &fbCheck{buf: buf}
	root := flatbuffers.GetUOffsetT(buf)
	c.pos(root, 4)
	if c.err != nil {
		return c.err
	}
	footer := &flatbuffers.Table{Bytes: buf, Pos: root}
	// Footer: version(0) schema(1) dictionaries(2) recordBatches(3) custom_metadata(4)
	if s := c.table(footer, 1); s != nil && c.err == nil {
		// Schema: endianness(0) fields(1) custom_metadata(2) features(3). arrow-go would byte-swap a
		// big-endian file in place, which a read-only mapping forbids; the dataset format is little-endian.
		if e := s.GetInt16Slot(slot(0), 0); e != 0 {
			return fmt.Errorf("schema endianness %d: only little-endian Arrow files are supported", e)
		}
		c.tables(s, 1, func(f *flatbuffers.Table) { c.field(f, 0) })
		c.keyValues(s, 2)
		c.vec(s, 3, 8)
	}
	c.keyValues(footer, 4)
	for _, i := range []int{2, 3} {
		n, start := c.vec(footer, i, 24) // Block: offset int64, metaDataLength int32 (+4), bodyLength int64
		for k := 0; k < n && c.err == nil; k++ {
			b := buf[int(start)+24*k:]
			off := int64(binary.LittleEndian.Uint64(b))
			meta := int64(int32(binary.LittleEndian.Uint32(b[8:])))
			body := int64(binary.LittleEndian.Uint64(b[16:]))
			if off < 0 || meta < 8 || body < 0 || off+meta+body > int64(len(data)) || off+meta+body < off {
				return fmt.Errorf("block %d (offset %d, metadata %d, body %d) outside the file of %d bytes (truncated?)", k, off, meta, body, len(data))
			}
			if err := verifyMessage(data[off : off+meta]); err != nil {
				return fmt.Errorf("block %d: %w", k, err)
			}
		}
	}
	return c.err
}

// verifyMessage checks one encapsulated message's metadata: [0xFFFFFFFF] int32 length, flatbuffer.
func verifyMessage(m []byte) error {
	if binary.LittleEndian.Uint32(m) == 0xFFFFFFFF {
		m = m[4:]
	}
	n := int(int32(binary.LittleEndian.Uint32(m)))
	if n <= 0 || n > len(m)-4 {
		return fmt.Errorf("message length %d out of range", n)
	}
	buf := m[4 : 4+n]
	c := &fbCheck{buf: buf}
	root := flatbuffers.GetUOffsetT(buf)
	c.pos(root, 4)
	if c.err != nil {
		return c.err
	}
	msg := &flatbuffers.Table{Bytes: buf, Pos: root}
	// Message: version(0) header_type(1) header(2) bodyLength(3) custom_metadata(4)
	c.keyValues(msg, 4)
	h := c.table(msg, 2)
	if h != nil && c.err == nil && msg.GetByteSlot(slot(1), 0) == 2 {
		h = c.table(h, 1) // DictionaryBatch: id(0) data(1) isDelta(2)
	}
	if h != nil && c.err == nil {
		// RecordBatch: length(0) nodes(1) buffers(2) compression(3) variadicBufferCounts(4)
		c.vec(h, 1, 16)
		c.vec(h, 2, 16)
		c.vec(h, 4, 8)
	}
	return c.err
}
