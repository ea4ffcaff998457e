package hub

// TLS session-ticket keys that survive a restart (issue 6, the restart
// storm). A client that resumes a TLS session skips the certificate, its
// signature and its verification; but crypto/tls makes new random ticket
// keys at every start, so after a restart every device would pay a full
// handshake at once. With a data directory the hub keeps its keys in
// DATA_DIR/tls/session-ticket-keys (0600, like the other secrets there):
// one line per key, "UNIX-SECONDS HEX-KEY", newest first. The newest key
// encrypts new tickets; it is replaced every ticketRotation, and the
// older ones are kept to decrypt tickets for ticketKeys rotations in all,
// so a ticket resumes for at least two rotations after it was issued.
// Anyone who reads the file can decrypt recorded sessions resumed with
// those keys (not those with a fresh key exchange, which TLS 1.3 always
// adds): treat it like the hub's private keys.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TicketKeysFile is the file, in the data directory's tls directory, that
// holds the TLS session-ticket keys.
const TicketKeysFile = "session-ticket-keys"

const (
	ticketRotation = 24 * time.Hour
	ticketKeys     = 3
)

// ticketKey is one session-ticket key and when it was made.
type ticketKey struct {
	made time.Time
	key  [32]byte
}

// readTicketKeys reads the keys in path, newest first; a missing file
// holds none.
func readTicketKeys(path string) ([]ticketKey, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read session ticket keys: %w", err)
	}
	var keys []ticketKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		ts, hexKey, ok := strings.Cut(line, " ")
		secs, err := strconv.ParseInt(ts, 10, 64)
		raw, herr := hex.DecodeString(strings.TrimSpace(hexKey))
		if !ok || err != nil || herr != nil || len(raw) != 32 {
			return nil, fmt.Errorf("read session ticket keys: %s line %d: want UNIX-SECONDS and a 64-digit hex key", path, n)
		}
		k := ticketKey{made: time.Unix(secs, 0)}
		copy(k.key[:], raw)
		keys = append(keys, k)
	}
	return keys, nil
}

// rotateTicketKeys returns keys (newest first) with a new key in front
// when the newest is older than ticketRotation (or there is none), and
// without those beyond ticketKeys; changed reports whether it made one.
func rotateTicketKeys(keys []ticketKey, now time.Time) (_ []ticketKey, changed bool, err error) {
	if len(keys) == 0 || now.Sub(keys[0].made) >= ticketRotation || keys[0].made.After(now.Add(time.Hour)) {
		k := ticketKey{made: now}
		if _, err := rand.Read(k.key[:]); err != nil {
			return nil, false, fmt.Errorf("make a session ticket key: %w", err)
		}
		keys = append([]ticketKey{k}, keys...)
		changed = true
	}
	if len(keys) > ticketKeys {
		keys, changed = keys[:ticketKeys], true
	}
	return keys, changed, nil
}

func writeTicketKeys(path string, keys []ticketKey) error {
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%d %s\n", k.made.Unix(), hex.EncodeToString(k.key[:]))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write session ticket keys: %w", err)
	}
	if err := writeFileAtomic(path, []byte(b.String())); err != nil {
		return fmt.Errorf("write session ticket keys: %w", err)
	}
	return nil
}

// ticketKeeper loads, rotates and stores the hub's session-ticket keys and
// installs them in a TLS configuration.
type ticketKeeper struct {
	path string
	cfg  *tls.Config
	s    *Server

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	running sync.WaitGroup // the timer's function
}

// startTicketKeys installs the keys kept in the data directory in cfg
// (making or rotating them as due) and rotates them while the hub runs.
// The returned function stops the rotation and waits for it. Without a
// data directory it leaves cfg to crypto/tls's own keys.
func (s *Server) startTicketKeys(cfg *tls.Config) (stop func(), err error) {
	if s.cfg.DataDir == "" {
		return func() {}, nil
	}
	k := &ticketKeeper{path: filepath.Join(s.cfg.DataDir, "tls", TicketKeysFile), cfg: cfg, s: s}
	next, err := k.rotate(time.Now())
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.running.Add(1)
	k.t = time.AfterFunc(next, k.tick)
	k.mu.Unlock()
	return k.stop, nil
}

// rotate brings the file up to date at now, installs its keys and returns
// how long until the next rotation.
func (k *ticketKeeper) rotate(now time.Time) (time.Duration, error) {
	keys, err := readTicketKeys(k.path)
	if err != nil {
		return 0, err
	}
	keys, changed, err := rotateTicketKeys(keys, now)
	if err != nil {
		return 0, err
	}
	if changed {
		if err := writeTicketKeys(k.path, keys); err != nil {
			return 0, err
		}
	} else if err := os.Chmod(k.path, 0o600); err != nil {
		return 0, fmt.Errorf("session ticket keys: %w", err)
	}
	raw := make([][32]byte, len(keys))
	for i, key := range keys {
		raw[i] = key.key
	}
	k.cfg.SetSessionTicketKeys(raw)
	return max(keys[0].made.Add(ticketRotation).Sub(now), time.Minute), nil
}

func (k *ticketKeeper) tick() {
	defer k.running.Done()
	next, err := k.rotate(time.Now())
	if err != nil {
		// The keys in use stay; try again later.
		k.s.log.Warn().Err(err).Msg("session ticket keys not rotated")
		next = time.Hour
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped {
		k.running.Add(1)
		k.t.Reset(next)
	}
}

func (k *ticketKeeper) stop() {
	k.mu.Lock()
	k.stopped = true
	if k.t.Stop() {
		k.running.Done()
	}
	k.mu.Unlock()
	k.running.Wait()
}
