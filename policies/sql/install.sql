-- Installed by `pgtenant policies install`, in one transaction, as a privileged role.
-- Placeholders: {owner} (the NOLOGIN role owning everything here) and {hmac} (pgcrypto's
-- hmac, schema-qualified, because the functions below run with a fixed search_path).

CREATE SCHEMA IF NOT EXISTS pgtenant AUTHORIZATION {owner};
ALTER SCHEMA pgtenant OWNER TO {owner};
REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC;

-- HMAC keys. Readable by the owner only: no grant to PUBLIC or to the app role, ever.
-- Several keys may be active at once (a rotation window).
CREATE TABLE IF NOT EXISTS pgtenant.keys (
    id         text PRIMARY KEY,
    key        bytea NOT NULL CHECK (octet_length(key) >= 32),
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
ALTER TABLE pgtenant.keys OWNER TO {owner};
REVOKE ALL ON pgtenant.keys FROM PUBLIC;

-- The tenant registry (`pgtenant tenants ...`).
CREATE TABLE IF NOT EXISTS pgtenant.tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{{1,63}}$'),
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now(),
    schema_name text NULL
);
ALTER TABLE pgtenant.tenants OWNER TO {owner};
REVOKE ALL ON pgtenant.tenants FROM PUBLIC;
-- Placement across clusters (docs/scale-out.md): the [databases] entry holding the
-- tenant's rows (NULL: the placement's default), and status 'moving' while
-- `pgtenant tenants move` copies them. Added in place for registries made before.
ALTER TABLE pgtenant.tenants ADD COLUMN IF NOT EXISTS placement text NULL;
ALTER TABLE pgtenant.tenants DROP CONSTRAINT IF EXISTS tenants_status_check;
ALTER TABLE pgtenant.tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('active', 'suspended', 'moving'));

-- The tenant, only when pgtenant.proof is HMAC-SHA256(key, tenant || ':' || backend pid)
-- for an active key; NULL otherwise. A proof is bound to one server process, so a
-- proof seen on one connection is worthless on another. A tenant set without a proof
-- that verifies is a forged context (SQL that slipped past the guard, a client connected
-- straight to PostgreSQL, a proxy with the wrong key): it raises WARNING with SQLSTATE
-- PT401 and a fixed message naming no tenant, which reaches the client (the proxy counts
-- it) and, with the default log_min_messages, the server log. No tenant at all (an
-- admin or service session) is not a forgery and stays silent. PL/pgSQL rather than SQL: it
-- keeps its plan for the session, where a SQL body is planned again in every statement
-- (measured: about 16 us instead of 95 us added to a statement whose policy calls it).
-- pg_temp last in search_path: otherwise it is searched first for tables and types.
-- PARALLEL RESTRICTED: in a parallel worker pg_backend_pid() would be the worker's pid.
CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
    SET search_path = pg_catalog, pgtenant, pg_temp
AS $fn$
DECLARE
    tenant text := current_setting('app.current_tenant', true);
    proof  text := current_setting('pgtenant.proof', true);
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RETURN NULL;
    END IF;
    IF proof IS NOT NULL AND length(proof) = 64 THEN
        PERFORM FROM pgtenant.keys AS k
        WHERE k.active
          AND encode({hmac}(convert_to(tenant || ':' || pg_backend_pid()::text, 'UTF8'),
                            k.key, 'sha256'), 'hex') = proof;
        IF FOUND THEN
            RETURN tenant;
        END IF;
    END IF;
    RAISE WARNING USING ERRCODE = 'PT401',
        MESSAGE = 'pgtenant: forged or unverifiable tenant context';
    RETURN NULL;
END
$fn$;
ALTER FUNCTION pgtenant.current_tenant() OWNER TO {owner};
REVOKE ALL ON FUNCTION pgtenant.current_tenant() FROM PUBLIC;

-- The registry status of one tenant ('active', 'suspended') or NULL when unknown; lets
-- the proxy's upstream role look up a tenant without reading the registry table.
CREATE OR REPLACE FUNCTION pgtenant.tenant_status(tenant text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pgtenant, pg_temp
AS $fn$
    SELECT t.status FROM pgtenant.tenants AS t WHERE t.id = tenant
$fn$;
ALTER FUNCTION pgtenant.tenant_status(text) OWNER TO {owner};
REVOKE ALL ON FUNCTION pgtenant.tenant_status(text) FROM PUBLIC;

-- The registry status and placement of one tenant; no row when it is unknown. For the
-- proxy's placement lookups (proxy/placement.py), like tenant_status above.
CREATE OR REPLACE FUNCTION pgtenant.tenant_placement(tenant text)
    RETURNS TABLE (status text, placement text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pgtenant, pg_temp
AS $fn$
    SELECT t.status, t.placement FROM pgtenant.tenants AS t WHERE t.id = tenant
$fn$;
ALTER FUNCTION pgtenant.tenant_placement(text) OWNER TO {owner};
REVOKE ALL ON FUNCTION pgtenant.tenant_placement(text) FROM PUBLIC;
