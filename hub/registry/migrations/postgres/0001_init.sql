-- Version 1 of the PostgreSQL registry: devices, policies, stream events.
-- The same tables as the SQLite store's version 1 (sqlite.go), in
-- PostgreSQL's types: times are timestamptz (microseconds, as the store
-- keeps them), durations bigint nanoseconds. COLLATE "C" makes device IDs
-- and policy names sort bytewise, as the Store contract orders them;
-- equality is exact (case-sensitive) under any collation.

CREATE TABLE devices (
	id            text COLLATE "C" PRIMARY KEY,
	status        text        NOT NULL,
	status_reason text        NOT NULL DEFAULT '',
	primary_key   text        NOT NULL DEFAULT '',
	secondary_key text        NOT NULL DEFAULT '',
	etag          text        NOT NULL,
	generation    text        NOT NULL,
	created       timestamptz NOT NULL,
	updated       timestamptz NOT NULL
);

CREATE TABLE policies (
	name          text COLLATE "C" PRIMARY KEY,
	primary_key   text     NOT NULL DEFAULT '',
	secondary_key text     NOT NULL DEFAULT '',
	rights        smallint NOT NULL
);

CREATE TABLE stream_events (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	stream_id  text             NOT NULL,
	device_id  text COLLATE "C" NOT NULL,
	policy     text             NOT NULL,
	name       text             NOT NULL,
	result     text             NOT NULL,
	reason     text             NOT NULL,
	bytes_up   bigint           NOT NULL,
	bytes_down bigint           NOT NULL,
	started    timestamptz      NOT NULL,
	duration   bigint           NOT NULL
);

CREATE INDEX stream_events_started ON stream_events (started, id);
CREATE INDEX stream_events_device ON stream_events (device_id, started, id);
