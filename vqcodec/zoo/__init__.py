"""The shipped models: the catalog of identifiers, model files and their checks."""
