-- Opens and clicks outlive the events' hot period: a campaign's counts and a sequence's
-- "opened / clicked" condition read them through `events_all`, so the archive gets the same
-- lookup by message as `events` has (0012).
CREATE INDEX events_archive_engagement_message ON events_archive ((payload->>'message_id'))
    WHERE type IN ('email.opened', 'email.clicked');
