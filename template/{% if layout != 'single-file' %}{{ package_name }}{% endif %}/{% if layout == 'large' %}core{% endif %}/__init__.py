"""Core of the application: configuration, extensions, JSend, errors, logging."""
