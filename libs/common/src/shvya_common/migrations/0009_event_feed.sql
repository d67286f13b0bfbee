-- The event feed: every event that is written also enters `event_feed`, in the same transaction
-- (a trigger), and the scheduler's reactors consume it: sequences stop when a lead replies or
-- opts out, outbound webhooks fan out to their endpoints. A row leaves the feed when its
-- reactors have run, in the unit of work that records what they did, so each event is acted
-- on exactly once even with several scheduler replicas (rows are taken FOR UPDATE SKIP LOCKED).
CREATE TABLE event_feed (
    event_id    uuid PRIMARY KEY REFERENCES events(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A reactor that failed on this event: tried again on later passes, then set aside.
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX event_feed_order ON event_feed (created_at) WHERE attempts < 5;

CREATE FUNCTION feed_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_feed (event_id, created_at) VALUES (NEW.id, NEW.created_at);
    RETURN NULL;
END $$;

CREATE TRIGGER events_feed AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION feed_event();
