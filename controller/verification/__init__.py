"""Automated meter verification line (after JJG 596-2012 / IEC 62053-21).

Schemes are data (:mod:`.scheme`), computations follow the regulation exactly
(:mod:`.errors`), the :mod:`.sequencer` runs a batch on any rig that fulfils
the protocols in :mod:`.ports` (the simulated one lives in ``drivers.sim.rig``),
and :mod:`.results` keeps every measured result durable.
"""
