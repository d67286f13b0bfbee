-- Ids of the tables every message writes sort by creation time (UUIDv7, RFC 9562), so their
-- inserts share the rightmost leaves of the primary-key indexes instead of landing on random
-- ones (shvya_common/ids.py says why; the services make the same ids in Python). Rows already
-- written keep their ids: v4 and v7 ids are both UUIDs and nothing reads an id's version.
--
-- Named for SHVYA: PostgreSQL 18 has a uuidv7() of its own, which this must not shadow.
CREATE FUNCTION shvya_uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- 48 bits of Unix milliseconds over the first six bytes of a v4 UUID; bits 52 and 53 turn
    -- its version nibble 0100 into 0111. The variant and the random bits stay v4's.
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                     * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

ALTER TABLE messages ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE leads ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE events ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE ai_sessions ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE timers ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE webhook_deliveries ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE webhook_attempts ALTER COLUMN id SET DEFAULT shvya_uuid7();
ALTER TABLE lead_contacts ALTER COLUMN id SET DEFAULT shvya_uuid7();
