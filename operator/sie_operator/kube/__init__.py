"""A deliberately small async Kubernetes client (aiohttp) for the few calls kopf does not make.

The official ``kubernetes`` package would triple the operator's memory (kopf's own
measurements); we need status patches, Events and EndpointSlice reads only.
"""
