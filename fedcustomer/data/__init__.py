"""Partner data: schemas and tiers, ingest and validation, stores, synthetic and real-data loaders."""
