// Package sas implements the credentials of Azure IoT Hub, which dsproxy
// accepts unchanged: connection strings, shared access keys and shared
// access signature (SAS) tokens.
//
// # Connection strings
//
// A connection string is a ";"-separated list of Key=Value parts, split on
// the first "=" so that base64 padding survives. Keys are case-sensitive.
// A device connection string names the device and carries its key:
//
//	HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=<base64>
//
// A policy (service) connection string names a shared access policy of the
// hub instead:
//
//	HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=<base64>
//
// dsproxy also lets HostName carry a port ("127.0.0.1:8443", "[::1]:8443"),
// which Azure never does. GatewayHostName is accepted and ignored; module
// identities (ModuleId) and X.509 authentication (x509=true) are refused.
//
// # Keys
//
// A shared access key is 16 to 64 random bytes, written in padded standard
// base64. It is a secret: nothing in this package puts a key, or a
// connection string holding one, into an error.
//
// # SAS tokens
//
// A token is
//
//	SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<policy>]
//
// where resource is the URL-encoded resource URI the token grants access to
// ("myhub.azure-devices.net/devices/dev1" for one device, the bare host name
// for the whole hub), expiry is a Unix time in seconds, policy is the name of
// the shared access policy whose key signed it (absent for device tokens),
// and signature is the URL-encoded base64 of
//
//	HMAC-SHA256(base64-decoded key, sr + "\n" + se)
//
// with sr and se exactly as they appear in the token. Azure SDKs disagree on
// the case of percent escapes in sr ("%2f" or "%2F"), so a verifier must sign
// the bytes it received rather than re-encode the resource; [Token.Verify]
// does. A device ID inside the resource is itself percent-encoded by most
// SDKs before the whole resource is encoded again; [DeviceResource] does the
// same and [Token.Covers] undoes it.
//
// Checking a token is three steps, all needed: [ParseToken], [Token.Verify]
// with the key of the device or policy the caller looked up, and
// [Token.Covers] with the resource being accessed.
package sas

import "errors"

// Errors returned by this package, for use with [errors.Is]. Every error
// from a parser wraps [ErrMalformed]; [ErrExpired], [ErrBadSignature] and
// [ErrScope] come only from checking a parsed token.
var (
	// ErrMalformed reports a token, connection string, key or device ID
	// that cannot be parsed or breaks Azure IoT Hub's rules.
	ErrMalformed = errors.New("malformed")
	// ErrExpired reports a token whose expiry, plus the allowed clock
	// skew, has passed.
	ErrExpired = errors.New("token expired")
	// ErrBadSignature reports a token not signed by the given key.
	ErrBadSignature = errors.New("signature mismatch")
	// ErrScope reports a token whose resource does not cover the resource
	// being accessed.
	ErrScope = errors.New("token not valid for this resource")
)
