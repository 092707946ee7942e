"""Companion readiness gateway: the read side of the config service.

A gateway replica mirrors the config service's registry (bootstrap over HTTP, live NATS
``_all`` deltas, an ``/epoch`` poller and immediate catch-up on any sign of a gap), keeps a
WebSocket to every worker, and answers "which workers report the expected bundle config
hash" per model, one model at a time or for the whole catalog in one response.

Pure parts (delta rules, health state machine, readiness snapshot, static discovery
parsing) have no I/O; the adapters (HTTP client, NATS, WebSocket, Kubernetes watch,
aiohttp server) are thin wrappers around them.
"""
