-- The registry's generation: bumped in the same transaction as every change to the
-- registry tables (statement triggers), so every process's cache (which polls it) sees
-- each committed change, a key revocation included, whatever happens to Redis.
CREATE TABLE registry_state (
    id          integer PRIMARY KEY CHECK (id = 1),
    generation  bigint NOT NULL
);
INSERT INTO registry_state (id, generation) VALUES (1, 1);

CREATE FUNCTION registry_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER schema_groups_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON schema_groups
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER schemas_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON schemas
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER schema_versions_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON schema_versions
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER integrations_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON integrations
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER ingest_keys_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ingest_keys
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
