"""Rules for spiking and continuous-time networks; importing this module registers them all:
``microcircuit`` and ``bptt`` (``microcircuit.py``), ``sigprop_snn`` and ``sigprop_ct``
(``sp_spiking.py``). ``bioprop.rules`` imports it with one line."""

from bioprop.rules import microcircuit, sp_spiking

__all__ = ["microcircuit", "sp_spiking"]
