-- outboxd: the NOTIFY trigger for the push publisher (--source=notify).
-- Install after sql/outbox.sql (idempotent):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/outbox_notify.sql
--
-- One notification per inserting statement on channel 'outbox', with an
-- empty payload: outboxd only needs to know that there is something to
-- drain, and reads the rows themselves with the same query as the poller.
-- PostgreSQL delivers a notification at commit (never for a rolled-back
-- transaction) and folds identical notifications of one transaction into
-- one, so a transaction of many inserts costs one wake-up.

CREATE OR REPLACE FUNCTION public.outbox_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  PERFORM pg_notify('outbox', '');
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_notify ON public.outbox;
CREATE TRIGGER outbox_notify
  AFTER INSERT ON public.outbox
  FOR EACH STATEMENT
  EXECUTE FUNCTION public.outbox_notify();
