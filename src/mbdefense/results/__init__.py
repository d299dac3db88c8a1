"""The typed results document and its schema version."""
