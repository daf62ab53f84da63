"""fedcustomer: privacy-preserving federated customer analytics.

Partners keep customer data at home; only DP-protected model updates and DP
aggregates leave a partner node.
"""

__version__ = "0.1.0"
