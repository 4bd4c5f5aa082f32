"""`gridctl sim` as the product runs it: the simulators read the whole config file.

The simulated warehouse PLC is built from the ``[warehouse]`` table and the
meters' defaults from ``[site]``, sections the drivers do not own; the service
layer loads and checks the whole file and hands it to ``drivers.sim.cli``.
"""

from __future__ import annotations

import argparse

from controller.config import ConfigError, load_config
from drivers.config import ConfigFileError, FieldConfig
from drivers.sim import cli


def load_whole_config(path: str) -> FieldConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    cli.add_parser(sub, load=load_whole_config)
