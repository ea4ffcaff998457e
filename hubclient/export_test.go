package hubclient

import "time"

// SetAcceptedHook makes Accept call f after answering the hub and before
// connecting to the streaming endpoint, and returns a function that
// removes it.
func SetAcceptedHook(f func()) (restore func()) {
	testHookAccepted.Store(&f)
	return func() { testHookAccepted.Store(nil) }
}

// SetWarmKeep sets how long a connection dialed ahead for the next stream
// is kept, for clients made from now on, and returns a function that
// restores the default.
func SetWarmKeep(d time.Duration) (restore func()) {
	testWarmKeep.Store(&d)
	return func() { testWarmKeep.Store(nil) }
}

// Warm reports whether the device holds a connection dialed ahead.
func (c *DeviceClient) Warm() bool { return c.streams.warm() }

// Warm reports whether the client holds a connection dialed ahead.
func (c *ServiceClient) Warm() bool { return c.streams.warm() }

// LegacyDeviceFrames makes a device announce no large frames on its
// control session, as a build before them: it accepts data frames of up
// to wire.LegacyFramePayload only.
func LegacyDeviceFrames(c *DeviceConfig) { c.legacyFrames = true }

// LegacyServiceFrames makes a session client announce no large frames on
// its sessions, as a build before them.
func LegacyServiceFrames(c *ServiceConfig) { c.legacyFrames = true }
