// Package config loads dsproxy's YAML configuration files: one file per
// command, a mapping whose keys are that command's long flag names exactly
// as they are written on the command line, without the dashes.
//
//	# dsproxy device --config device.yaml
//	connection-string-file: /etc/dsproxy/device.cs
//	ca-file: /etc/dsproxy/ca.pem
//	target: ["ssh=localhost:22", "rdp=localhost:3389"]
//	keepalive: 15s
//	log-level: debug
//
// The loader only parses and checks: a key the command does not have is an
// error naming the key, the file and the valid keys; so is a value of the
// wrong type (a list for a string flag, "soon" for a duration). It returns
// each value as the text the flag would take on the command line, so the
// caller applies it with the flag's own parser and the precedence (flag >
// environment > file > default) stays the caller's.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Kind is the type of a flag's value, which decides what a key may hold.
type Kind int

const (
	// String takes any scalar: listen: 2222 is "2222".
	String Kind = iota
	// Bool takes true or false.
	Bool
	// Int takes an integer.
	Int
	// Float takes a number.
	Float
	// Duration takes a Go duration such as 15s, 1h30m or 0.
	Duration
	// List takes a list of scalars, or one scalar for a list of one.
	List
)

func (k Kind) String() string {
	switch k {
	case String:
		return "a string"
	case Bool:
		return "true or false"
	case Int:
		return "an integer"
	case Float:
		return "a number"
	case Duration:
		return "a duration such as 15s or 1h30m"
	case List:
		return "a list"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// MaxFileSize bounds what Load reads: a configuration file is a few lines,
// and a larger one is a mistake (a wrong path to a log or a binary).
const MaxFileSize = 1 << 20

// Values maps a flag name to the values the file gives it, each the text
// the flag would take on the command line. Flags other than List have
// exactly one value.
type Values map[string][]string

// ErrUnknownKey is wrapped by the error for a key that is not a flag of the
// command.
var ErrUnknownKey = errors.New("unknown key")

// Load reads the YAML file name and checks it against flags, the command's
// long flag names and their kinds.
func Load(name string, flags map[string]Kind) (Values, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", name, MaxFileSize)
	}
	return Parse(name, b, flags)
}

// Parse is Load for data already read; name only labels errors. An empty
// document (or only comments) gives no values.
func Parse(name string, data []byte, flags map[string]Kind) (Values, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return Values{}, nil
		}
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: want one YAML document", name)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return Values{}, nil
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return Values{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config file %s: line %d: want a mapping of flag names to values (listen: \":8443\")", name, root.Line)
	}
	out := Values{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("config file %s: line %d: a key must be a flag name", name, k.Line)
		}
		key := k.Value
		kind, ok := flags[key]
		if !ok {
			return nil, unknownKey(name, k.Line, key, flags)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("config file %s: line %d: %s given twice", name, k.Line, key)
		}
		vals, err := value(v, kind)
		if err != nil {
			return nil, fmt.Errorf("config file %s: line %d: %s: %w", name, v.Line, key, err)
		}
		out[key] = vals
	}
	return out, nil
}

func unknownKey(name string, line int, key string, flags map[string]Kind) error {
	valid := make([]string, 0, len(flags))
	for k := range flags {
		valid = append(valid, k)
	}
	slices.Sort(valid)
	hint := ""
	if near := nearest(key, valid); near != "" {
		hint = fmt.Sprintf(" (did you mean %s?)", near)
	}
	return fmt.Errorf("config file %s: line %d: %w %q%s; valid keys: %s", name, line, ErrUnknownKey, key, hint, strings.Join(valid, ", "))
}

// value checks one value node against kind and returns its command-line text.
func value(n *yaml.Node, kind Kind) ([]string, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if kind == List {
		switch n.Kind {
		case yaml.SequenceNode:
			out := make([]string, 0, len(n.Content))
			for _, e := range n.Content {
				if e.Kind == yaml.AliasNode {
					e = e.Alias
				}
				s, err := scalar(e, String)
				if err != nil {
					return nil, fmt.Errorf("list element: %w", err)
				}
				out = append(out, s)
			}
			return out, nil
		case yaml.ScalarNode:
			s, err := scalar(n, String)
			if err != nil {
				return nil, err
			}
			return []string{s}, nil
		}
		return nil, fmt.Errorf("want %s", kind)
	}
	s, err := scalar(n, kind)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

func scalar(n *yaml.Node, kind Kind) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
	case yaml.SequenceNode:
		return "", fmt.Errorf("want %s, not a list", kind)
	case yaml.MappingNode:
		return "", fmt.Errorf("want %s, not a mapping", kind)
	default:
		return "", fmt.Errorf("want %s", kind)
	}
	tag := n.ShortTag()
	if tag == "!!null" {
		return "", fmt.Errorf("no value: want %s", kind)
	}
	switch kind {
	case Bool:
		var b bool
		if tag != "!!bool" || n.Decode(&b) != nil {
			return "", fmt.Errorf("%q: want true or false", n.Value)
		}
		return strconv.FormatBool(b), nil
	case Int:
		var i int64
		if tag != "!!int" || n.Decode(&i) != nil {
			return "", fmt.Errorf("%q: want an integer", n.Value)
		}
		return strconv.FormatInt(i, 10), nil
	case Float:
		var f float64
		if (tag != "!!int" && tag != "!!float") || n.Decode(&f) != nil {
			return "", fmt.Errorf("%q: want a number", n.Value)
		}
		return strconv.FormatFloat(f, 'g', -1, 64), nil
	case Duration:
		if _, err := time.ParseDuration(n.Value); err != nil {
			return "", fmt.Errorf("%q: want a duration such as 15s or 1h30m", n.Value)
		}
		return n.Value, nil
	}
	return n.Value, nil
}

// nearest returns the name in names closest to s by edit distance, or ""
// when none is close enough to be a likely typo.
func nearest(s string, names []string) string {
	best, bestD := "", len(s)/2+2
	for _, n := range names {
		if d := distance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
