"""Core of the application: configuration, extensions, JSend, errors, logging,
and what the models, schemas and views of every resource share."""
