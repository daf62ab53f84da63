"""Empirical privacy audit: canaries and membership inference check every epsilon we claim.

Accounting is only as good as the code it accounts for. These modules measure a lower
bound on the epsilon a run's releases really have, to set beside the epsilon claimed:
``bounds`` (the statistics), ``canaries`` (one-run DP-SGD audit), ``membership`` (attacks
on a released model), ``analytics_audit`` (analytics releases), ``vertical_replay`` and ``vertical_audit`` (split
learning), ``run_audit`` (a run
directory in, ``privacy_audit.json`` and ``.png`` out). See docs/PRIVACY_AUDIT.md.
"""
