-- Hubs may delete photos older than photo_retention_days; the capture's row,
-- verdicts and evidence grid stay, and photo_deleted_at says when the file
-- went. A photo is stored once per content, so the storage_key index lets the
-- hub see whether a newer capture still needs the same file.
ALTER TABLE captures ADD COLUMN photo_deleted_at timestamptz;
CREATE INDEX captures_photo_age_idx ON captures (received_at)
    WHERE photo_deleted_at IS NULL;
CREATE INDEX captures_storage_key_idx ON captures (storage_key);
