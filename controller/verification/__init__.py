"""Automated meter verification line (after JJG 596-2012 / IEC 62053-21).

Schemes are data (:mod:`.scheme`), computations follow the regulation exactly
(:mod:`.errors`), the :mod:`.sequencer` runs a batch on any rig that fulfils
the contract in ``drivers.verification_rig`` (the simulated rig, ``drivers.sim.rig``,
is handed over by the service through the subsystem's ``LinePlant``),
and :mod:`.results` keeps every measured result durable.
"""
