"""The fault campaign: replication cut at random moments, and proof that it recovers.

A *round* makes new random data in a fresh area of the lab, replicates it, injects one
fault at a random moment of a cycle (during the listing, the snapshot, early, in the
middle of or late in the stream, during retention, or between cycles), lets the
following cycles run with no manual step (only the repairs the README documents, where
zfsrepl is expected to refuse and say so), and then checks:

* the next cycles recovered, and one more cycle is incremental (the chain holds);
* the newest snapshot is the same on both sides, and the files of every snapshot
  the destination holds equal the source's (checksums through clones);
* the newest snapshot holds exactly the data written last;
* no output of zfsrepl showed a traceback;
* no process of the round (zfsrepl, zfs, sudo, ssh, hooks, sshd sessions) is left.

Fault kinds are in :mod:`faults.kinds`, the round driver and the checks in
:mod:`faults.rounds`. The short version that the test command runs is
``tests/faults/test_faults.py``; the full campaign is ``scripts/faults`` (see
``python3 -m faults --help`` with ``tests`` on ``PYTHONPATH``). RELIABILITY.md holds
the figures.
"""
