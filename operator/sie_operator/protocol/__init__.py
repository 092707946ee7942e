"""Wire formats shared by the gateway and its clients (the operator), with no I/O.

Nothing here imports ``gateway`` or ``controller``: both sides import this package, so the
encoder and the decoder of a format live in one module and cannot drift apart.
"""
