-- Runs once, when the "grafana" profile's PostgreSQL initialises its data
-- volume (docker-entrypoint-initdb.d), as the pbx2mqtt superuser.
--
-- Grafana reads the history as "grafana", which can read every table and
-- view (and so the views of migrations/postgres/*_grafana_views.sql) but
-- write nothing: Grafana's docs ask for a read-only user for SQL data
-- sources, since anyone allowed to edit a panel can run any statement.
-- The password is in deploy/grafana/provisioning/datasources/pbx2mqtt.yml;
-- the database is reachable only inside the compose network.
CREATE ROLE grafana LOGIN PASSWORD 'grafana';
GRANT pg_read_all_data TO grafana;
