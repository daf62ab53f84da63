"""What every federated job shares: its configuration base, its run directory and its train message.

Horizontal (:mod:`fedcustomer.server.job`) and vertical (:mod:`fedcustomer.vertical.job`)
jobs derive from :class:`fedcustomer.jobs.config.JobBase`; the command line reads its
defaults from :mod:`fedcustomer.jobs.config` (torch-free, so ``--help`` stays fast).
"""
