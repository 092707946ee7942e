"""Pure catalog core: schema, bundles and routing, hashing, the append-only registry.

Nothing in this package does I/O beyond reading bundle/model files handed to it; the
store, NATS and HTTP adapters build on it.
"""
