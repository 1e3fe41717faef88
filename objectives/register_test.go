package objectives

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An unknown objective's error lists the registered ones and says how a custom objective gets
// registered (a blank import of its package, whose init() calls Register), pointing at the page that
// explains it; that page exists and shows the import.
func TestUnknownObjectiveSaysHowToRegister(t *testing.T) {
	_, err := New("nope", nil)
	if err == nil {
		t.Fatal("New(nope): no error")
	}
	msg := err.Error()
	for _, want := range []string{`objective: "nope" is not registered (have `, "dmd", "init()", `import _ "`, "cmd/fewstep", "docs/new-objective.md"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	doc, err := os.ReadFile(filepath.Join("..", "docs", "new-objective.md"))
	if err != nil {
		t.Fatalf("the page the error points at: %v", err)
	}
	if !strings.Contains(string(doc), "import _") || !strings.Contains(string(doc), "## 8.") {
		t.Errorf("docs/new-objective.md shows no blank import in a section 8")
	}
}
