package wire

// Device is a device as the registry REST API (GET/PUT /devices/{id})
// shows it, shaped like Azure IoT Hub's device identity.
type Device struct {
	DeviceID        string         `json:"deviceId"`
	GenerationID    string         `json:"generationId,omitempty"`
	ETag            string         `json:"etag,omitempty"`
	ConnectionState string         `json:"connectionState,omitempty"`
	Status          string         `json:"status,omitempty"`
	StatusReason    string         `json:"statusReason,omitempty"`
	StatusUpdated   string         `json:"statusUpdatedTime,omitempty"`
	Authentication  Authentication `json:"authentication"`
}

// Authentication is the authentication block of a [Device].
type Authentication struct {
	SymmetricKey SymmetricKey `json:"symmetricKey"`
	Type         string       `json:"type"`
}

// SymmetricKey holds a device's two keys.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// Hub describes the hub's endpoints (GET /hub), like
// `az iot hub devicestream show`.
type Hub struct {
	HostName           string   `json:"hostName"`
	StreamingEndpoints []string `json:"streamingEndpoints"`
}
