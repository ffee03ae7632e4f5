"""Where plugin modules come from: a local folder, or an object store mirrored into one (S3, Cloud Storage)."""
