-- compose.yml only: passwords for the demo roles (sql/outbox.sql makes the
-- roles without one) and an application login holding outboxd_writer.
ALTER ROLE outboxd_publisher PASSWORD 'publisher';
CREATE ROLE demo_app LOGIN PASSWORD 'writer' IN ROLE outboxd_writer;
