-- Titles (issue 14): a table may be addressed by its title in place of its name, so a
-- title names one table of its schema group and can never be read as another name.
--  * unique within the group (the partial unique index);
--  * never another table's name in the group, and no table is named as another's title;
--  * "<prefix>_<title>" (the read API's form of a title) is never another table's
--    resource type, and no resource type is another table's "<prefix>_<title>".
-- The trigger checks the last two under a transaction-scoped advisory lock, so two
-- concurrent schema writes cannot both pass; a clash raises unique_violation naming
-- the rule as its constraint (shared/pg/registry.py turns that into a 409).
DO $$
DECLARE
    clash record;
BEGIN
    SELECT group_id, title INTO clash FROM schemas WHERE title IS NOT NULL
        GROUP BY group_id, title HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'schema group % has several tables titled %: give them distinct '
            'titles (UPDATE schemas SET title = ...) before migrating', clash.group_id,
            quote_literal(clash.title);
    END IF;
    SELECT a.group_id, a.title INTO clash FROM schemas a JOIN schemas b
        ON b.group_id = a.group_id AND b.id <> a.id AND b.table_name = a.title LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'schema group % has a table titled % and another table of that name: '
            'retitle it before migrating', clash.group_id, quote_literal(clash.title);
    END IF;
    SELECT a.group_id, a.title INTO clash FROM schemas a
        JOIN schema_groups g ON g.id = a.group_id
        JOIN schemas b ON b.id <> a.id AND b.resource_type = g.prefix || '_' || a.title
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the title % of a table of schema group % reads as another table''s '
            'resource type: retitle it before migrating', quote_literal(clash.title),
            clash.group_id;
    END IF;
END;
$$;

CREATE UNIQUE INDEX schemas_group_title ON schemas (group_id, title) WHERE title IS NOT NULL;

CREATE FUNCTION schemas_check_names() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    own_prefix text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ingestd.schemas.names'));
    IF NEW.title IS NOT NULL AND EXISTS (
        SELECT 1 FROM schemas s WHERE s.group_id = NEW.group_id AND s.id <> NEW.id
            AND s.table_name = NEW.title
    ) THEN
        RAISE EXCEPTION 'title % is the name of another table of the group',
            quote_literal(NEW.title)
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'schemas_title_is_a_table';
    END IF;
    IF EXISTS (
        SELECT 1 FROM schemas s WHERE s.group_id = NEW.group_id AND s.id <> NEW.id
            AND s.title = NEW.table_name
    ) THEN
        RAISE EXCEPTION 'table name % is the title of another table of the group',
            quote_literal(NEW.table_name)
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'schemas_table_is_a_title';
    END IF;
    SELECT prefix INTO own_prefix FROM schema_groups WHERE id = NEW.group_id;
    IF NEW.title IS NOT NULL AND EXISTS (
        SELECT 1 FROM schemas s WHERE s.id <> NEW.id
            AND s.resource_type = own_prefix || '_' || NEW.title
    ) THEN
        RAISE EXCEPTION 'resource type %_% is taken', own_prefix, NEW.title
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'schemas_title_is_a_resource_type';
    END IF;
    IF EXISTS (
        SELECT 1 FROM schemas s JOIN schema_groups g ON g.id = s.group_id
        WHERE s.id <> NEW.id AND s.title IS NOT NULL
            AND g.prefix || '_' || s.title = NEW.resource_type
    ) THEN
        RAISE EXCEPTION 'resource type % is the read form of another table''s title',
            NEW.resource_type
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'schemas_resource_type_is_a_title';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schemas_check_names BEFORE INSERT OR UPDATE OF table_name, resource_type, title
    ON schemas FOR EACH ROW EXECUTE FUNCTION schemas_check_names();
