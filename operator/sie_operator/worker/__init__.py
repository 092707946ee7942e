"""Reference worker: the real worker's config and status protocol, without running models."""
