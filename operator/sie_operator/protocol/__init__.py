"""The SIE fleet protocol: what gateways, workers and the operator share, one floor below them.

- ``configclient``: the config service's read API (bootstrap, epoch, export), failing over
  between several config-service URLs;
- ``deltas``: the NATS config delta subjects and payloads, producer trust, epoch steps;
- ``mirror``: a registry mirror kept current from bootstrap, deltas and epoch polls;
- ``natsfeed``: a NATS subscription that survives reconnects;
- ``readiness_stream``: the gateway's readiness watch stream (records, tokens, decoder).

Nothing here imports ``gateway``, ``worker`` or ``controller``: each of them imports this
package, so neither reaches into another's internals, and the two ends of each format live
in one module and cannot drift apart.
"""
