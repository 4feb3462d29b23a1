-- outboxd: a partitioned outbox (idempotent). Install after sql/outbox.sql
-- (it uses the schema outbox and the roles made there):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/outbox_partitioned.sql
-- and run outboxd with
--   --table=public.outbox_partitioned --publication=outbox_partitioned_pub
--
-- The table is range-partitioned by created_at, one partition per UTC day,
-- named outbox_partitioned_pYYYYMMDD. The publication has
-- publish_via_partition_root = true, so every partition's inserts are
-- decoded as inserts into public.outbox_partitioned: same topic, same key as
-- from a plain table, and partitions can come and go under a running
-- outboxd. Retention (cleanup strategy 2) is dropping old partitions: no
-- DELETE, no VACUUM, no bloat. Schedule the maintenance daily (cron,
-- pg_cron) as the table owner:
--   SELECT * FROM outbox.maintain_partitions('public.outbox_partitioned',
--                                            7, interval '3 days');

CREATE TABLE IF NOT EXISTS public.outbox_partitioned (
  id            uuid        NOT NULL DEFAULT gen_random_uuid(),
  aggregatetype text        NOT NULL,
  aggregateid   text        NOT NULL,
  type          text        NOT NULL,
  payload       jsonb,
  headers       jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  -- A primary key of a partitioned table must include the partition key.
  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication
                 WHERE pubname = 'outbox_partitioned_pub') THEN
    CREATE PUBLICATION outbox_partitioned_pub
      FOR TABLE public.outbox_partitioned
      WITH (publish = 'insert', publish_via_partition_root = true);
  END IF;
END
$$;

-- Creates the partition of `p_table` for the UTC day `p_day` if missing;
-- returns its name.
CREATE OR REPLACE FUNCTION outbox.create_partition(p_table regclass,
                                                   p_day date)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
  v_schema text;
  v_table  text;
  v_name   text;
BEGIN
  SELECT n.nspname, c.relname INTO v_schema, v_table
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = p_table;
  v_name := v_table || '_p' || to_char(p_day, 'YYYYMMDD');
  IF to_regclass(format('%I.%I', v_schema, v_name)) IS NULL THEN
    EXECUTE format(
      'CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
      v_schema, v_name, p_table,
      (p_day::timestamp AT TIME ZONE 'UTC'),
      ((p_day + 1)::timestamp AT TIME ZONE 'UTC'));
  END IF;
  RETURN v_name;
END
$$;

-- The maintenance: creates the partitions of today and the next `p_ahead`
-- days (UTC), and drops the daily partitions that ended more than
-- `p_retention` ago. Returns what it did. Dropping a partition is safe under
-- a running outboxd (CDC): its rows were published from the WAL when they
-- were inserted; make the retention longer than any publishing delay you
-- tolerate (and, with the polling publishers, than their backlog).
CREATE OR REPLACE FUNCTION outbox.maintain_partitions(
    p_table     regclass DEFAULT 'public.outbox_partitioned',
    p_ahead     integer  DEFAULT 7,
    p_retention interval DEFAULT interval '7 days')
RETURNS TABLE (action text, partition_name text)
LANGUAGE plpgsql
AS $$
DECLARE
  v_today date := (now() AT TIME ZONE 'UTC')::date;
  v_part  record;
  v_day   date;
BEGIN
  FOR i IN 0 .. p_ahead LOOP
    partition_name := outbox.create_partition(p_table, v_today + i);
    action := 'present';
    RETURN NEXT;
  END LOOP;
  FOR v_part IN
    SELECT n.nspname AS schema_name, c.relname AS name
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE i.inhparent = p_table
       AND c.relname ~ '_p[0-9]{8}$'
  LOOP
    v_day := to_date(right(v_part.name, 8), 'YYYYMMDD');
    -- The partition covers [v_day, v_day + 1) UTC.
    IF ((v_day + 1)::timestamp AT TIME ZONE 'UTC') < now() - p_retention THEN
      EXECUTE format('DROP TABLE %I.%I', v_part.schema_name, v_part.name);
      action := 'dropped';
      partition_name := v_part.name;
      RETURN NEXT;
    END IF;
  END LOOP;
END
$$;

SELECT count(*) AS partitions_ready
  FROM outbox.maintain_partitions('public.outbox_partitioned', 7,
                                  interval '7 days');

GRANT SELECT ON public.outbox_partitioned TO outboxd_publisher;
GRANT INSERT ON public.outbox_partitioned TO outboxd_writer;
REVOKE ALL ON FUNCTION outbox.create_partition(regclass, date),
  outbox.maintain_partitions(regclass, integer, interval) FROM PUBLIC;
