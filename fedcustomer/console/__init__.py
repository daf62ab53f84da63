"""The web console: audit, budgets, approvals, people, ingests and runs in a browser (docs/CONSOLE.md)."""
