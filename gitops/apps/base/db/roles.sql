-- taskq's database roles, least privilege (docs/deploy.md, "Database roles").
-- Runs once, as a superuser, in the taskq database right after it is created:
-- CloudNativePG runs it as bootstrap.initdb.postInitApplicationSQLRefs (prod),
-- the dev StatefulSet's init script runs it with psql (dev). The owner role
-- (taskq_owner, which the migrations log in as) exists already and owns the
-- database; the login roles of the processes are made afterwards (prod:
-- CloudNativePG managed roles; dev: the init script) as members of the two
-- group roles below. Nothing here needs a password.

-- What API, worker and prune may do: read and write rows, never DDL.
CREATE ROLE taskq_runtime NOLOGIN;
-- What KEDA's queue-depth query may do: read.
CREATE ROLE taskq_readonly NOLOGIN;

DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO taskq_runtime, taskq_readonly',
                 current_database());
  -- Nobody but the owner opens connections or creates objects by default.
  EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO taskq_runtime, taskq_readonly;

-- Objects the migrations create (as taskq_owner) are usable by the group
-- roles from the moment they exist, without a GRANT in every migration.
ALTER DEFAULT PRIVILEGES FOR ROLE taskq_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO taskq_runtime;
ALTER DEFAULT PRIVILEGES FOR ROLE taskq_owner IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO taskq_runtime;
ALTER DEFAULT PRIVILEGES FOR ROLE taskq_owner IN SCHEMA public
  GRANT SELECT ON TABLES TO taskq_readonly;
