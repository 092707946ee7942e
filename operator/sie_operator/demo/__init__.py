"""`sie-operator demo`: the whole loop on one machine."""
