-- Version 2: where each device's newest control session is held, for hub
-- replicas sharing this database (ClaimSession and friends in sessions.go).
-- A row outlives its session (replica '' once released) so that epochs
-- never go back.

CREATE TABLE device_sessions (
	device_id text COLLATE "C" PRIMARY KEY,
	epoch     bigint      NOT NULL,
	replica   text        NOT NULL,
	since     timestamptz NOT NULL
);

CREATE INDEX device_sessions_replica ON device_sessions (replica, device_id);
