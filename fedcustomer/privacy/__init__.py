"""Privacy machinery: DP accounting and budgets, DP-SGD, encryption and keys, access policy, audit log."""
