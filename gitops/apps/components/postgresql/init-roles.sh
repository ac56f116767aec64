#!/usr/bin/env bash
# dev only: create taskq's database roles when the StatefulSet's PostgreSQL
# initialises an empty volume (the image runs /docker-entrypoint-initdb.d/*.sh
# once, as the superuser, against a temporary server). prod gets the same
# roles from CloudNativePG: bootstrap.initdb (owner), the same db/roles.sql,
# and managed roles (taskq_app, taskq_keda).
#   taskq_owner  owns the database; the migrations log in as it
#   taskq_app    the API, workers and prune (member of taskq_runtime)
set -euo pipefail

psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB")

"${psql[@]}" -v owner_password="$TASKQ_OWNER_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE taskq_owner LOGIN PASSWORD :'owner_password';
ALTER DATABASE :"db" OWNER TO taskq_owner;
SQL
"${psql[@]}" -f /etc/taskq-db/roles.sql
"${psql[@]}" -v app_password="$TASKQ_APP_PASSWORD" <<'SQL'
CREATE ROLE taskq_app LOGIN PASSWORD :'app_password' IN ROLE taskq_runtime;
SQL
