"""Vertical (split) federated learning between a label owner and a feature-only partner.

A bank and a retailer hold different facts about partly the same customers. After a
private set intersection aligns their shared customers, each party trains a bottom
model on its own columns; the label owner also holds the top model. Embeddings go up
and gradients come back as Flower messages through the coordinator, under DP.
"""
