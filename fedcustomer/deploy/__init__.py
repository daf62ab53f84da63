"""Running a federation across organisations on Flower's Deployment Engine.

``pki`` (development CA/server certificates, SuperNode keys), ``coordinator``
(SuperLink + our ServerApp submitted with ``flwr run``), ``node`` (a partner's
SuperNode on its own home), ``secagg`` (the SecAgg+ variant of the apps) and
``audit`` (one audit entry per round a partner took part in).
"""
