"""Networks: the registry (``create_network(name, **cfg)``) and the nets it builds."""

from dosepred.networks.registry import create_network, network_names, register_network

__all__ = ["create_network", "network_names", "register_network"]

import dosepred.networks.critic  # noqa: E402,F401  (registers the nets)
import dosepred.networks.searched  # noqa: E402,F401
import dosepred.networks.unet  # noqa: E402,F401
