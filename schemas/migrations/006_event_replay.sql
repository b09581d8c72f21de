-- A client of the event stream that reconnects asks for what it missed
-- (?since=): the hub reads the captures received and the analyses stored
-- since then, which these indexes find without scanning either table.
CREATE INDEX IF NOT EXISTS captures_received_idx ON captures (received_at);
CREATE INDEX IF NOT EXISTS analyses_created_idx ON analyses (created_at);
