// Command validate decodes every object of Kubernetes YAML streams (`helm template` output, the
// example manifests) STRICTLY into its Go type: an unknown or misspelt field, a value of the wrong
// type, a malformed quantity or a duplicate key is an error, as is a kind it does not know.
//
//	helm template deploy/helm/streamledger | validate -        # or: validate FILE...
//
// Kubernetes kinds decode into k8s.io/api (the version helm itself is built with: this module also
// pins helm, as a tool). Custom resources (the ServiceMonitor CRD, Strimzi, the MongoDB community
// operator) decode into the minimal structs of crds.go: only the fields the chart and the examples
// use, so a field they start using must be added there first.
//
// It prints one line per object (or per problem) and exits 1 if any object did not decode.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// header is what every object must carry, read leniently before the strict decoding.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

type document struct {
	source string // file name, or the `# Source:` line helm writes above each object
	index  int
	body   []byte
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE... (- for stdin)")
		os.Exit(2)
	}
	var docs []document
	for _, name := range os.Args[1:] {
		found, err := read(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(2)
		}
		docs = append(docs, found...)
	}
	counts := map[string]int{}
	failed := 0
	for _, doc := range docs {
		what, err := validate(doc.body)
		if err != nil {
			failed++
			fmt.Printf("INVALID %s (document %d of %s): %v\n", what, doc.index, doc.source, err)
			continue
		}
		counts[strings.SplitN(what, " ", 2)[0]]++
	}
	kinds := make([]string, 0, len(counts))
	for kind, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s x%d", kind, n))
	}
	sort.Strings(kinds)
	fmt.Printf("decoded strictly: %d of %d objects (%s)\n", len(docs)-failed, len(docs), strings.Join(kinds, ", "))
	if failed > 0 || len(docs) == 0 {
		if len(docs) == 0 {
			fmt.Println("INVALID: no object found")
		}
		os.Exit(1)
	}
}

// read splits a YAML stream into its non-empty documents.
func read(name string) ([]document, error) {
	var in io.Reader = os.Stdin
	source := "stdin"
	if name != "-" {
		file, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer file.Close()
		in, source = file, name
	}
	reader := yaml.NewYAMLReader(bufio.NewReader(in))
	var docs []document
	for index := 1; ; index++ {
		body, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if !hasContent(body) {
			continue
		}
		docSource := source
		for _, line := range strings.Split(string(body), "\n") {
			if rest, ok := strings.CutPrefix(line, "# Source: "); ok {
				docSource = rest
				break
			}
		}
		docs = append(docs, document{source: docSource, index: index, body: body})
	}
}

func hasContent(body []byte) bool {
	for _, line := range bytes.Split(body, []byte("\n")) {
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) > 0 && trimmed[0] != '#' && string(trimmed) != "---" {
			return true
		}
	}
	return false
}

// validate decodes one object strictly into its type; `what` names it ("Deployment name").
func validate(body []byte) (what string, err error) {
	var head header
	if err := sigsyaml.Unmarshal(body, &head); err != nil {
		return "object", fmt.Errorf("not a YAML object: %w", err)
	}
	what = strings.TrimSpace(head.Kind + " " + head.Metadata.Name)
	if head.APIVersion == "" || head.Kind == "" {
		return what, errors.New("apiVersion and kind are required")
	}
	if head.Metadata.Name == "" {
		return what, errors.New("metadata.name is required")
	}
	newObject, known := types[head.APIVersion+"/"+head.Kind]
	if !known {
		return what, fmt.Errorf("no Go type for %s %s: add it to types (main.go, crds.go)", head.APIVersion, head.Kind)
	}
	if err := sigsyaml.UnmarshalStrict(body, newObject()); err != nil {
		return what, err
	}
	return what, nil
}
