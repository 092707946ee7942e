"""sie-operator: declarative model configuration for SIE inference clusters on Kubernetes."""

__version__ = "0.1.0"
