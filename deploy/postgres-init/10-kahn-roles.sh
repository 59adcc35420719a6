#!/bin/sh
# Run once, by the postgres image, when its data volume is new: the two roles of cloud mode (README,
# "Cloud mode: database roles"). kahn_owner owns the database and runs migrations; kahn_service,
# which the service runs as, owns nothing and is held to row-level security.
set -eu
# Passwords go in as psql variables, quoted by psql (:'name'), never pasted into the SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$KAHN_OWNER_PASSWORD" -v service_password="$KAHN_SERVICE_PASSWORD" <<'SQL'
CREATE ROLE kahn_owner LOGIN PASSWORD :'owner_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE kahn_service LOGIN PASSWORD :'service_password' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE DATABASE kahn OWNER kahn_owner;
SQL
