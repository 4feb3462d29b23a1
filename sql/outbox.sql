-- outboxd: install the outbox (idempotent). Run as the table owner:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/outbox.sql
--
-- Creates the outbox table (Debezium outbox router column names), the
-- publication outboxd streams (inserts only), a function that writes an
-- event, and a least-privilege role for the publisher.

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

-- Writes one event in the caller's transaction; returns its id.
CREATE OR REPLACE FUNCTION public.outbox_emit(
    p_aggregatetype text,
    p_aggregateid   text,
    p_type          text,
    p_payload       jsonb,
    p_headers       jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE sql
AS $$
  INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers)
  VALUES (p_aggregatetype, p_aggregateid, p_type, p_payload, p_headers)
  RETURNING id;
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
-- Polling (SELECT ... FOR UPDATE needs an UPDATE privilege; marking updates
-- published_at). For --poll-cleanup=delete also:
--   GRANT DELETE ON public.outbox TO outboxd_publisher;
GRANT UPDATE (published_at) ON public.outbox TO outboxd_publisher;
