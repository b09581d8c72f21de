-- The schedule the hub last gave a device (set_schedule), sent again in
-- auth_ok at every connection: a camera that was offline when the schedule
-- changed, or that lost its state, takes it up when it connects. NULL: the
-- camera keeps its own configuration.
ALTER TABLE devices ADD COLUMN schedule jsonb;
