package hubclient

// SetAcceptedHook makes Accept call f after answering the hub and before
// connecting to the streaming endpoint, and returns a function that
// removes it.
func SetAcceptedHook(f func()) (restore func()) {
	testHookAccepted.Store(&f)
	return func() { testHookAccepted.Store(nil) }
}
