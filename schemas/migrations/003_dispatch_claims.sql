-- Hubs sharing a database re-send pending captures after a Redis outage.
-- Each claims the rows it is about to send for a short lease, so two hubs
-- do not queue the same analysis twice; a hub that dies holding a claim
-- only delays those captures until the lease runs out.
ALTER TABLE captures ADD COLUMN dispatch_claimed_until timestamptz;
