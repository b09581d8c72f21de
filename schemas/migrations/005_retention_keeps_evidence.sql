-- Retention keeps the photos that people rely on: those a user gave feedback
-- on (labelled data for the next training run) and those an alert names (the
-- evidence behind it). Retention looks alerts up by capture for each old
-- photo, so that lookup gets an index as feedback already has.
CREATE INDEX IF NOT EXISTS alerts_capture_idx ON alerts (capture_id) WHERE capture_id IS NOT NULL;
