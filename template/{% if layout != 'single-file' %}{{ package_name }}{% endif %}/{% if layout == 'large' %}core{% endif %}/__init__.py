"""Core of the application: configuration, extensions, JSend, errors, logging and the
UTC timestamps every feature's models use."""
