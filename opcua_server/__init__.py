"""gridctl OPC UA server: information model, publisher, methods, security."""

from .config import OpcUaConfig, Role, UserConfig
from .methods import AlarmInfo, AlarmSource
from .server import OpcUaServer
from .settings import ServerSettings

__all__ = [
    "AlarmInfo",
    "AlarmSource",
    "OpcUaConfig",
    "OpcUaServer",
    "Role",
    "ServerSettings",
    "UserConfig",
]
