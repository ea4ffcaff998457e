package registry

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
)

// ownerPolicy is the name of the policy that holds every right.
const ownerPolicy = "iothubowner"

// DefaultPolicies returns Azure IoT Hub's default shared access policies with
// empty keys, for the caller to fill: iothubowner (every right), service
// (ServiceConnect), registryRead (RegistryRead) and registryReadWrite
// (RegistryRead and RegistryWrite).
func DefaultPolicies() []Policy {
	return []Policy{
		{Name: ownerPolicy, Rights: RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect},
		{Name: "service", Rights: ServiceConnect},
		{Name: "registryRead", Rights: RegistryRead},
		{Name: "registryReadWrite", Rights: RegistryRead | RegistryWrite},
	}
}

// policyCreator is implemented by stores that can create a policy only if it
// is missing, atomically, returning ErrExists otherwise. Without it, two hubs
// starting at once on a shared store could both create iothubowner, and the
// connection string one of them prints would not work.
type policyCreator interface {
	createPolicy(ctx context.Context, p Policy) error
}

// EnsureDefaultPolicies creates each missing policy of [DefaultPolicies] with
// fresh random keys (32 bytes from crypto/rand, standard base64). Existing
// policies are left untouched, whatever their keys and rights. It reports
// whether it created iothubowner, which means this is the hub's first start
// and the owner connection string should be shown.
func EnsureDefaultPolicies(ctx context.Context, s Store) (created bool, err error) {
	pc, atomic := s.(policyCreator)
	for _, p := range DefaultPolicies() {
		if !atomic {
			_, err := s.GetPolicy(ctx, p.Name)
			if err == nil {
				continue
			}
			if !errors.Is(err, ErrNotFound) {
				return created, fmt.Errorf("ensure default policies: %w", err)
			}
		}
		if p.PrimaryKey, err = newKey(); err != nil {
			return created, fmt.Errorf("ensure default policies: %w", err)
		}
		if p.SecondaryKey, err = newKey(); err != nil {
			return created, fmt.Errorf("ensure default policies: %w", err)
		}
		if atomic {
			err = pc.createPolicy(ctx, p)
			if errors.Is(err, ErrExists) {
				continue
			}
		} else {
			err = s.PutPolicy(ctx, p)
		}
		if err != nil {
			return created, fmt.Errorf("ensure default policies: %w", err)
		}
		if p.Name == ownerPolicy {
			created = true
		}
	}
	return created, nil
}

// newKey returns a new random 256-bit key, standard base64, as Azure makes them.
func newKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}
