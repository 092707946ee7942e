"""Kubernetes side: the ModelConfig CRD and its SIE mapping, status computation, kopf adapters."""
