"""The config service: the one write path (ConfigService), its NATS publisher and the
SIE-compatible Config API (aiohttp). ``sie-operator config-api`` runs it standalone."""
