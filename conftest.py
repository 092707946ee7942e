"""Repository-wide pytest plugins: real nats-server and real control-plane fixtures."""

pytest_plugins = [
    "sie_operator.devcluster.nats_plugin",
    "sie_operator.devcluster.pytest_plugin",
]
