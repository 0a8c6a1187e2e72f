"""JSON Schemas of records: evolution checks."""
