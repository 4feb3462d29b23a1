-- outboxd: install the outbox (idempotent). Run as the table owner:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/outbox.sql
--
-- Creates the outbox table (Debezium outbox router column names), the
-- publication outboxd streams (inserts only), the schema `outbox` with the
-- functions that write events (outbox.emit: a table row; outbox.emit_message:
-- a transactional logical decoding message, no row at all;
-- outbox.emit_transient: a row deleted in the same transaction), and two
-- least-privilege roles (docs/databases.md "Database setup"):
--   outboxd_publisher  LOGIN REPLICATION, SELECT on the outbox: runs outboxd
--   outboxd_writer     NOLOGIN, INSERT on the outbox and EXECUTE on the
--                      emit functions: grant it to your application's role
-- The table stays public.outbox (Debezium's name); the functions live in the
-- schema outbox. public.outbox_emit(...) is kept as a synonym of
-- outbox.emit(...).

CREATE TABLE IF NOT EXISTS public.outbox (
  id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregatetype text        NOT NULL,
  aggregateid   text        NOT NULL,
  type          text        NOT NULL,
  payload       jsonb,
  headers       jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  -- order of the polling publisher (--source=poll); CDC uses commit order.
  seq           bigint      GENERATED ALWAYS AS IDENTITY
);

-- The polling publishers (--source=poll|notify) mark a row published after
-- Kafka acknowledged it (--poll-cleanup=mark, the default) or delete it
-- (--poll-cleanup=delete). The partial index keeps "unpublished rows in seq
-- order" cheap however many published rows the table holds.
-- The reconciler (--reconcile-interval, --source=cdc) and --cleanup-after
-- read the rows of a created_at window: one index keeps that a range scan
-- whatever the table holds.
CREATE INDEX IF NOT EXISTS outbox_created_at ON public.outbox (created_at);

ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS published_at timestamptz;
CREATE INDEX IF NOT EXISTS outbox_unpublished_seq
  ON public.outbox (seq) WHERE published_at IS NULL;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'outbox_pub') THEN
    CREATE PUBLICATION outbox_pub FOR TABLE public.outbox
      WITH (publish = 'insert');
  END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS outbox;

-- Writes one event (a row of public.outbox) in the caller's transaction and
-- returns its id. Needs only INSERT on the table: the id is made here, not
-- read back with RETURNING (which would need SELECT).
CREATE OR REPLACE FUNCTION outbox.emit(
    p_aggregatetype text,
    p_aggregateid   text,
    p_type          text,
    p_payload       jsonb,
    p_headers       jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
  v_id uuid := gen_random_uuid();
BEGIN
  INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload,
                             headers)
  VALUES (v_id, p_aggregatetype, p_aggregateid, p_type, p_payload, p_headers);
  RETURN v_id;
END
$$;

-- The message variant: the event as a transactional logical decoding
-- message (prefix 'outbox', outboxd's --message-prefix). Nothing is stored
-- in any table, so nothing accumulates; the event is atomic with the
-- caller's transaction. SECURITY DEFINER because pg_logical_emit_message is
-- not executable by ordinary roles; it can emit nothing but an outbox event.
CREATE OR REPLACE FUNCTION outbox.emit_message(
    p_aggregatetype text,
    p_aggregateid   text,
    p_type          text,
    p_payload       jsonb,
    p_headers       jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id uuid := gen_random_uuid();
BEGIN
  IF p_aggregatetype IS NULL OR p_aggregateid IS NULL OR p_type IS NULL THEN
    RAISE EXCEPTION 'outbox.emit_message: aggregatetype, aggregateid and type are required';
  END IF;
  PERFORM pg_logical_emit_message(true, 'outbox',
    jsonb_build_object('id', v_id::text, 'aggregatetype', p_aggregatetype,
                       'aggregateid', p_aggregateid, 'type', p_type,
                       'payload', p_payload,
                       'headers', COALESCE(p_headers, '{}'::jsonb))::text);
  RETURN v_id;
END
$$;

-- Cleanup strategy 1 (CDC only): insert and delete in the same
-- transaction. The insert is in the WAL, so outboxd publishes it; the table
-- stays empty. Needs DELETE on the table as well. Never with the polling
-- publishers, which read the table.
CREATE OR REPLACE FUNCTION outbox.emit_transient(
    p_aggregatetype text,
    p_aggregateid   text,
    p_type          text,
    p_payload       jsonb,
    p_headers       jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
  v_id uuid := outbox.emit(p_aggregatetype, p_aggregateid, p_type, p_payload,
                           p_headers);
BEGIN
  DELETE FROM public.outbox WHERE id = v_id;
  RETURN v_id;
END
$$;

-- Writes one event in the caller's transaction; returns its id. Kept for
-- existing callers: the same as outbox.emit.
CREATE OR REPLACE FUNCTION public.outbox_emit(
    p_aggregatetype text,
    p_aggregateid   text,
    p_type          text,
    p_payload       jsonb,
    p_headers       jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE sql
AS $$
  SELECT outbox.emit(p_aggregatetype, p_aggregateid, p_type, p_payload,
                     p_headers);
$$;

-- The publisher needs REPLICATION (to stream the slot) and SELECT on the
-- outbox only. Give it a password or a pg_hba rule of your own.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd_publisher') THEN
    CREATE ROLE outboxd_publisher LOGIN REPLICATION;
  END IF;
END
$$;
GRANT SELECT ON public.outbox TO outboxd_publisher;
-- --cleanup-after (outboxd deletes rows its record proves acknowledged)
-- also needs:
--   GRANT DELETE ON public.outbox TO outboxd_publisher;

-- outboxd's record of its acknowledged position, one row per slot (docs/reliability.md,
-- "Lost slots"): written on the ordinary connection before a position is
-- confirmed to the slot, it survives a restart and a failover (it replicates
-- with the database; logical slots do not on PostgreSQL <= 16), so a lost or
-- re-created slot is detected instead of silently skipping events. Not in
-- the publication. outboxd creates it when missing if it may.
CREATE TABLE IF NOT EXISTS outbox.publisher_state (
  slot_name            text        PRIMARY KEY,
  source               text        NOT NULL,  -- system id/database/slot
  last_ack_lsn         pg_lsn      NOT NULL,  -- acknowledged by Kafka
  last_ack_commit_time timestamptz,           -- NULL: unknown
  xmin_horizon         xid8,                  -- NULL: unknown
  updated_at           timestamptz NOT NULL DEFAULT now(),
  reconciled_before    timestamptz            -- the reconciler's progress
);
-- An outbox.publisher_state of an older outboxd gets the column too.
ALTER TABLE outbox.publisher_state
  ADD COLUMN IF NOT EXISTS reconciled_before timestamptz;
GRANT USAGE ON SCHEMA outbox TO outboxd_publisher;
GRANT SELECT, INSERT, UPDATE ON outbox.publisher_state TO outboxd_publisher;
-- PostgreSQL 17+: outboxd logs standby snapshots after creating its failover
-- slot so that standbys sync it within seconds (docs/failover.md). Skipped,
-- with a notice, when the installing role may not grant it.
DO $$
BEGIN
  IF current_setting('server_version_num')::int >= 170000 THEN
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot()
      TO outboxd_publisher;
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'not granted: EXECUTE ON pg_log_standby_snapshot() to outboxd_publisher (docs/failover.md)';
END
$$;

-- The writer: what an application needs to write events, nothing more.
-- Grant it to the application's login role: GRANT outboxd_writer TO app;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd_writer') THEN
    CREATE ROLE outboxd_writer NOLOGIN;
  END IF;
END
$$;
GRANT USAGE ON SCHEMA outbox TO outboxd_writer;
GRANT INSERT ON public.outbox TO outboxd_writer;
REVOKE ALL ON FUNCTION outbox.emit(text, text, text, jsonb, jsonb),
  outbox.emit_message(text, text, text, jsonb, jsonb),
  outbox.emit_transient(text, text, text, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.emit(text, text, text, jsonb, jsonb),
  outbox.emit_message(text, text, text, jsonb, jsonb),
  outbox.emit_transient(text, text, text, jsonb, jsonb) TO outboxd_writer;
-- Polling (SELECT ... FOR UPDATE needs an UPDATE privilege; marking updates
-- published_at). For --poll-cleanup=delete also:
--   GRANT DELETE ON public.outbox TO outboxd_publisher;
GRANT UPDATE (published_at) ON public.outbox TO outboxd_publisher;
