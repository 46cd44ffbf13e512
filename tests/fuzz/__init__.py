"""Differential fuzzing of syncd through its real command line.

A *case* is a seed. From it come a random schema written the way an ORM writes it
(:mod:`tests.fuzz.schemas`), random values of every SQLite storage class
(:mod:`tests.fuzz.values`) and random operations (:mod:`tests.fuzz.ops`), applied to a real
SQLite file while the real ``syncd`` streams it into a fresh PostgreSQL database and is
SIGKILLed now and then (:mod:`tests.fuzz.case`). Then every source row must be equal by
an oracle that shares nothing with syncd (:mod:`tests.fuzz.oracle`), or be in
``syncd.rejects`` with a reason; anything else is a divergence (:mod:`tests.fuzz.check`),
tagged with a class (:mod:`tests.fuzz.classify`) so that a report groups them
(:mod:`tests.fuzz.report`). ``syncd verify`` is run too and held to the same oracle.

Cases can share one SQLite file, one database and one daemon life (:mod:`tests.fuzz.batch`,
``--batch N``); :mod:`tests.fuzz.timing` shows where a case's time goes.

Entry points: ``tests/integration/campaigns/test_fuzz.py`` (a few cases) and ``python -m bench.fuzz``.
"""
